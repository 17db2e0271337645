/* The demo's counter in C, for an image with no shell (the musl one): prints "count N" ten times
 * a second, its state only in memory, so a count that carries on proves the process moved.
 * Built with musl-gcc by the bundle test. */
#include <stdio.h>
#include <time.h>

int main(void) {
    const struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 1;; i++) {
        printf("count %ld\n", i);
        nanosleep(&tick, NULL);
    }
}
