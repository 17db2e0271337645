/* A counter kept on the far side of a TCP connection (tcp_counter.py in C, for an image whose
 * libc is musl): each tick sends the next number through a connection to its own listener and
 * prints what comes back ("count N"). The count carries on after a restore only if the
 * connection came back established, with its queues. Built with musl-gcc by the bundle test. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void fail(const char *what) {
    perror(what);
    exit(1);
}

int main(void) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1) ||
        getsockname(listener, (struct sockaddr *)&addr, &len))
        fail("listen");
    int client = socket(AF_INET, SOCK_STREAM, 0);
    if (client < 0 || connect(client, (struct sockaddr *)&addr, sizeof addr)) fail("connect");
    int server = accept(listener, NULL, NULL);
    if (server < 0) fail("accept");
    for (long i = 1;; i++) {
        char buf[64];
        int n = snprintf(buf, sizeof buf, "%ld\n", i);
        if (send(client, buf, n, 0) != n) fail("send");
        ssize_t got = recv(server, buf, sizeof buf - 1, 0);
        if (got <= 0) fail("recv");
        buf[got] = 0;
        printf("count %ld\n", strtol(buf, NULL, 10));
        fflush(stdout);
        usleep(100000);
    }
}
