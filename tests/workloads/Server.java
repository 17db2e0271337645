// A JVM HTTP server with several threads: a pool of 8 request threads and a ticker thread
// that increments an in-memory counter every 100 ms. GET / answers "ticks <n> threads <t>".
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

public class Server {
    public static void main(String[] args) throws Exception {
        AtomicLong ticks = new AtomicLong();
        Thread ticker = new Thread(() -> {
            while (true) {
                try { Thread.sleep(100); } catch (InterruptedException e) { return; }
                ticks.incrementAndGet();
            }
        });
        ticker.setDaemon(true);
        ticker.start();
        HttpServer server = HttpServer.create(new InetSocketAddress(8080), 16);
        server.setExecutor(Executors.newFixedThreadPool(8));
        server.createContext("/", ex -> {
            byte[] body = ("ticks " + ticks.get() + " threads " + Thread.activeCount()).getBytes();
            ex.sendResponseHeaders(200, body.length);
            ex.getResponseBody().write(body);
            ex.close();
        });
        server.start();
        System.out.println("listening 8080");
    }
}
