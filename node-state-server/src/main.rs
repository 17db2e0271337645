use std::io::Write;
use std::net::SocketAddr;

use clap::Parser;

/// Tells crik whether a Kubernetes node is going away: watches Node objects (graceful node
/// shutdown, drain and preemption taints) and answers GET /v1/nodes/<name>.
#[derive(Parser)]
#[command(name = "crik-node-state-server", version)]
struct Args {
    /// Address to serve the API, /healthz, /readyz and /metrics on
    #[arg(long, default_value = "0.0.0.0:9376")]
    listen: SocketAddr,
}

fn main() {
    let args = Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|buf, r| {
            writeln!(buf, "{} crik-node-state-server {}: {}", buf.timestamp_seconds(), r.level(), r.args())
        })
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => fail("cannot start the async runtime", e),
    };
    rt.block_on(async {
        // In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config.
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => fail("cannot configure the Kubernetes client", e),
        };
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            log::info!("shutting down");
        };
        if let Err(e) = crik_node_state_server::server::run(args.listen, client, shutdown).await {
            fail(&format!("cannot serve on {}", args.listen), e);
        }
    });
}

fn fail(what: &str, why: impl std::fmt::Display) -> ! {
    eprintln!("crik-node-state-server: {what}: {why}");
    std::process::exit(1);
}
