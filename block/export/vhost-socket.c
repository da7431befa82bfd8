/*
 * vhost-socket.c - the vhost-user back end's socket: listening, one front
 * end at a time, reading each message with the fds it carries, sending
 * replies, and the control thread's life from listen to shutdown (see
 * vhost-user.h; vhost-user.c handles the messages themselves).
 *
 * Invariants:
 *  - a message is read whole (header, then exactly `size` bytes) into a
 *    fixed buffer before it is handled; a payload larger than
 *    VHOST_USER_MAX_PAYLOAD, a read that fails half way or fds that do
 *    not fit end the connection, and every fd received is passed on or
 *    closed;
 *  - the control thread is the only one that accepts, reads and writes
 *    the connection; others only shut it down (shutdown(2) wakes the
 *    thread from a blocking read);
 *  - when the thread ends, no front end is connected, every queue is
 *    stopped and every request has completed.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "block/export/vhost-user-int.h"

#define MAX_FDS VHOST_USER_MAX_REGIONS

/* Reads exactly len bytes, collecting fds that come along (up to MAX_FDS;
 * more are closed and fail the read).  0 at a clean EOF before the first
 * byte, 1 when done, -1 on error or EOF in the middle. */
static int read_full(int fd, void *buf, size_t len, int *fds, int *nfds)
{
    size_t got = 0;
    while (got < len) {
        char cbuf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
        struct iovec iov = { (uint8_t *)buf + got, len - got };
        struct msghdr mh = {
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = cbuf, .msg_controllen = sizeof(cbuf),
        };
        ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        bool bad = n <= 0 || (mh.msg_flags & MSG_CTRUNC);
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
             c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
                continue;
            }
            int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int f;
                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
                if (*nfds < MAX_FDS) {
                    fds[(*nfds)++] = f;
                } else {
                    close(f);
                    bad = true;
                }
            }
        }
        if (bad) {
            return n == 0 && got == 0 ? 0 : -1;
        }
        got += (size_t)n;
    }
    return 1;
}

static int send_reply(int fd, const void *buf, size_t len, int rfd)
{
    char cbuf[CMSG_SPACE(sizeof(int))];
    struct iovec iov = { (void *)buf, len };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
    if (rfd >= 0) {
        memset(cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf;
        mh.msg_controllen = sizeof(cbuf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &rfd, sizeof(int));
    }
    ssize_t n;
    do {
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return n == (ssize_t)len ? 0 : -1;
}

static void serve_connection(VhostDev *dev, int fd)
{
    static __thread uint8_t payload[VHOST_USER_MAX_PAYLOAD];
    static __thread uint8_t reply[sizeof(VhostUserHeader) +
                                  VHOST_USER_MAX_PAYLOAD];
    for (;;) {
        VhostUserHeader hdr;
        int fds[MAX_FDS];
        int nfds = 0;
        int r = read_full(fd, &hdr, sizeof(hdr), fds, &nfds);
        if (r == 1 && hdr.size > VHOST_USER_MAX_PAYLOAD) {
            vhost_report(dev, "message of %u bytes: disconnecting",
                         hdr.size);
            r = -1;
        }
        if (r == 1 && hdr.size > 0) {
            r = read_full(fd, payload, hdr.size, fds, &nfds);
            r = r == 1 ? 1 : -1;
        }
        if (r <= 0) {
            for (int i = 0; i < nfds; i++) {
                close(fds[i]);
            }
            break;
        }
        size_t rlen;
        int rfd;
        if (vhost_dev_handle_message(dev, &hdr, payload, fds, nfds, reply,
                                     &rlen, &rfd) < 0) {
            break;
        }
        if (rlen > 0) {
            int sr = send_reply(fd, reply, rlen, rfd);
            if (rfd >= 0) {
                close(rfd);
            }
            if (sr < 0) {
                break;
            }
        }
    }
    vhost_dev_disconnect(dev);
}

static void *control_main(void *arg)
{
    VhostDev *dev = arg;
    struct pollfd pfd[2] = {
        { .fd = dev->listen_fd, .events = POLLIN },
        { .fd = dev->wake_fd, .events = POLLIN },
    };
    while (!atomic_load(&dev->shutdown)) {
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            break;
        }
        if (pfd[1].revents) {
            break;
        }
        int c = accept4(dev->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            continue;
        }
        pthread_mutex_lock(&dev->lock);
        bool stop = atomic_load(&dev->shutdown);
        if (!stop) {
            dev->conn_fd = c;
        }
        pthread_mutex_unlock(&dev->lock);
        if (stop) {
            close(c);
            break;
        }
        serve_connection(dev, c);
        pthread_mutex_lock(&dev->lock);
        dev->conn_fd = -1;
        pthread_mutex_unlock(&dev->lock);
        close(c);
    }
    /* No front end is connected now and none will be: the queues are
     * stopped and every request has completed. */
    close(dev->listen_fd);
    dev->listen_fd = -1;
    pthread_mutex_lock(&dev->lock);
    void (*done)(void *) = dev->shutdown_done;
    void *opaque = dev->shutdown_opaque;
    pthread_mutex_unlock(&dev->lock);
    if (done) {
        done(opaque);
    }
    return NULL;
}

void vhost_dev_shutdown(VhostDev *dev, void (*done)(void *opaque),
                        void *opaque)
{
    pthread_mutex_lock(&dev->lock);
    dev->shutdown_done = done;
    dev->shutdown_opaque = opaque;
    atomic_store(&dev->shutdown, true);
    if (dev->conn_fd >= 0) {
        shutdown(dev->conn_fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&dev->lock);
    if (!dev->thread_started) {
        if (done) {
            done(opaque);
        }
        return;
    }
    uint64_t one = 1;
    ssize_t n = write(dev->wake_fd, &one, sizeof(one));
    (void)n;
}

int vhost_dev_listen(VhostDev *dev, const char *path, int fd, Error *err)
{
    if (path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path)) {
            return error_setf(err, ENAMETOOLONG, "socket path '%s' is too "
                              "long", path);
        }
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            return error_setf(err, errno, "socket: %s", strerror(errno));
        }
        struct stat st;
        if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) {
            unlink(path);
        }
        if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
            listen(fd, 1) < 0) {
            int e = errno;
            close(fd);
            return error_setf(err, e, "cannot listen on '%s': %s", path,
                              strerror(e));
        }
        dev->path = strdup(path);
    }
    dev->listen_fd = fd;
    dev->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (dev->wake_fd < 0) {
        return error_setf(err, errno, "eventfd: %s", strerror(errno));
    }
    int ret = pthread_create(&dev->thread, NULL, control_main, dev);
    if (ret != 0) {
        return error_setf(err, ret, "cannot start a thread: %s",
                          strerror(ret));
    }
    dev->thread_started = true;
    return 0;
}

void vhost_dev_free(VhostDev *dev)
{
    if (!dev) {
        return;
    }
    if (!atomic_load(&dev->shutdown)) {
        vhost_dev_shutdown(dev, NULL, NULL);
    }
    if (dev->thread_started) {
        pthread_join(dev->thread, NULL);
    }
    vhost_dev_disconnect(dev);
    for (int i = 0; i < dev->max_queues; i++) {
        vhost_queue_destroy(&dev->queues[i]);
    }
    if (dev->listen_fd >= 0) {
        close(dev->listen_fd);
    }
    if (dev->wake_fd >= 0) {
        close(dev->wake_fd);
    }
    if (dev->path) {
        unlink(dev->path);
        free(dev->path);
    }
    pthread_mutex_destroy(&dev->lock);
    free(dev->queues);
    free(dev->name);
    free(dev);
}
