// LD_PRELOAD shim for turnutils_uclient, used by benches/load/turn.py for every engine alike.
//
// Before each client session's real allocation, uclient makes a "probe" allocation from another
// UDP socket and never deletes it: it stays on the server until its lifetime ends. The kernel picks
// uclient's source ports at random from the ephemeral range, so with a few hundred sessions a new
// socket now and then gets the source port of an earlier socket whose allocation is still alive on
// the server. The server then rightly answers that Allocate with 437 (Allocation Mismatch, RFC 8656
// §7.2), and uclient sleeps a second and tries again with a new socket, which stretches the connect
// phase and can repeat. This shim hands out local ports in turn instead, so no 5-tuple is reused
// within a run: connect() on a UDP/IPv4 socket that is not bound yet first binds it to 127.0.0.1 and
// the next free port from TURNPORT_MIN (default 20000) to TURNPORT_MAX (default 32000).
//
// Build: cc -O2 -Wall -shared -fPIC -o libturnport.so turnport.c -ldl
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int port_next = -1, port_max = 32000;

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
  static int (*next_connect)(int, const struct sockaddr *, socklen_t);
  if (!next_connect)
    next_connect = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
  if (addr && addr->sa_family == AF_INET) {
    int type = 0;
    socklen_t type_len = sizeof type;
    struct sockaddr_in self;
    socklen_t self_len = sizeof self;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0 && type == SOCK_DGRAM &&
        getsockname(fd, (struct sockaddr *)&self, &self_len) == 0 && self.sin_port == 0) {
      if (port_next < 0) {
        const char *lo = getenv("TURNPORT_MIN"), *hi = getenv("TURNPORT_MAX");
        port_next = lo ? atoi(lo) : 20000;
        if (hi) port_max = atoi(hi);
      }
      while (port_next <= port_max) {
        struct sockaddr_in bind_to;
        memset(&bind_to, 0, sizeof bind_to);
        bind_to.sin_family = AF_INET;
        bind_to.sin_port = htons((unsigned short)port_next++);
        bind_to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&bind_to, sizeof bind_to) == 0 || errno != EADDRINUSE) break;
      }
    }
  }
  return next_connect(fd, addr, len);
}
