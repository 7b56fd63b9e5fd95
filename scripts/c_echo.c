/*
 * The floor for scripts/cost.sh: a minimal C epoll echo server, as the
 * performance issue describes it: edge-triggered, one 64 KiB buffer, one
 * read per event, the echo written back at once. No output queue, no
 * limits, no timers: what a hand-written loop costs with nothing else in it.
 * Not a server to use: a write the kernel does not take whole is dropped.
 *
 * build: cc -O2 -o c_echo scripts/c_echo.c
 * run:   c_echo --addr 127.0.0.1:0   (prints "listening on HOST:PORT")
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    char host[64] = "127.0.0.1";
    int port = 7891;
    if (argc == 3 && strcmp(argv[1], "--addr") == 0) {
        char *colon = strrchr(argv[2], ':');
        if (!colon || colon - argv[2] >= (long)sizeof host) {
            fprintf(stderr, "c_echo: --addr HOST:PORT\n");
            return 2;
        }
        memcpy(host, argv[2], colon - argv[2]);
        host[colon - argv[2]] = 0;
        port = atoi(colon + 1);
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "c_echo: not an IPv4 address: %s\n", host);
        return 2;
    }
    int one = 1;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 128) < 0) {
        perror("c_echo: listen");
        return 1;
    }
    socklen_t len = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &len);
    printf("listening on %s:%d\n", host, ntohs(addr.sin_port));
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[65536];
    struct epoll_event events[1024];
    for (;;) {
        int n = epoll_wait(ep, events, 1024, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("c_echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == lfd) {
                int c;
                while ((c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            if (!(events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                if (write(fd, buf, r) < 0 && errno != EAGAIN) close(fd);
            } else if (r == 0 || errno != EAGAIN) {
                close(fd);
            }
        }
    }
}
