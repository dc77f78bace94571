/* A userfaultfd service thread for the host oracle, in C.
 *
 * The engine's Resolver (mmemu/uffd.py) says how a declared service thread
 * answers each message; this is the same rule set run by a real thread of
 * the server process:
 *   - a page fault with UFFD_PAGEFAULT_FLAG_WP: UFFDIO_WRITEPROTECT off;
 *   - with UFFD_PAGEFAULT_FLAG_MINOR: UFFDIO_CONTINUE;
 *   - any other page fault: UFFDIO_ZEROPAGE, or UFFDIO_COPY of a page of
 *     `fill` bytes;
 *   - UFFD_EVENT_FORK: the child's new context is closed.
 * Each message goes to the log pipe (a 32-byte struct uffd_msg, then a
 * record of the errno of the ioctl that failed to resolve it, or 0) before
 * it is resolved, so it is logged by the time the faulting access goes on.
 *
 * An event is another matter: a syscall waiting for its event to be read
 * (fork in dup_userfaultfd_complete, madvise or munmap in
 * userfaultfd_event_wait_completion) is released inside our read(), by
 * userfaultfd_ctx_read completing the event, before read() has even copied
 * the message out. So that syscall may return before the message is
 * logged. What is exact: `busy` is set before each read() and cleared, with
 * a broadcast, only after the last message read is logged; settle() waits
 * for that, and stop() joins the thread, which leaves only from poll(),
 * with everything it read logged.
 *
 * The thread calls no allocator and takes no lock of the C library, and
 * names itself "mmemu-uffd": a server's fork_sibling (_access.c) knows from
 * the name that a raw clone copies nothing of it that the child could need.
 *
 * Why C and not a Python thread: some waits on the monitor happen in calls
 * that hold the GIL.  fork() blocks in dup_userfaultfd_complete() until the
 * FORK event is read, and the server forks with the GIL held
 * (PyOS_BeforeFork), so a Python service thread could never read it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define SERVICE_PAGE_SIZE 4096UL

struct service {
    int uffd;
    int stop_r, stop_w;     /* a byte on stop_w ends the thread */
    int log_r, log_w;
    int copy;               /* missing faults: COPY (1) or ZEROPAGE (0) */
    int resolve;            /* 0: only read and log (a reader while the server forks) */
    pthread_mutex_t lock;   /* guards busy */
    pthread_cond_t idle;    /* broadcast when busy drops to 0 */
    int busy;               /* from just before a read() to the last record it led to */
    unsigned long reads;    /* messages read so far (under lock) */
    unsigned test_delay_us; /* MMEMU_TEST_SERVICE_LOG_DELAY_US: widen the read->log window */
    pthread_t thread;
    unsigned char page[SERVICE_PAGE_SIZE];
};

struct log_record {
    struct uffd_msg msg;
    int32_t err;
    int32_t pad;
};

static int
resolve(struct service *s, const struct uffd_msg *m)
{
    int rc = 0;
    if (m->event == UFFD_EVENT_FORK) {
        close((int)m->arg.fork.ufd);
        return 0;
    }
    if (m->event != UFFD_EVENT_PAGEFAULT)
        return 0;
    uint64_t page = m->arg.pagefault.address & ~(SERVICE_PAGE_SIZE - 1);
    uint64_t flags = m->arg.pagefault.flags;
    if (flags & UFFD_PAGEFAULT_FLAG_WP) {
        struct uffdio_writeprotect wp = {.range = {page, SERVICE_PAGE_SIZE}, .mode = 0};
        rc = ioctl(s->uffd, UFFDIO_WRITEPROTECT, &wp);
    } else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
        struct uffdio_continue c = {.range = {page, SERVICE_PAGE_SIZE}, .mode = 0};
        rc = ioctl(s->uffd, UFFDIO_CONTINUE, &c);
    } else if (s->copy) {
        struct uffdio_copy c = {.dst = page, .src = (uint64_t)(uintptr_t)s->page,
                                .len = SERVICE_PAGE_SIZE, .mode = 0};
        rc = ioctl(s->uffd, UFFDIO_COPY, &c);
    } else {
        struct uffdio_zeropage z = {.range = {page, SERVICE_PAGE_SIZE}, .mode = 0};
        rc = ioctl(s->uffd, UFFDIO_ZEROPAGE, &z);
    }
    return rc < 0 ? errno : 0;
}

static void
log_write(struct service *s, const struct log_record *r)
{
    /* Records are smaller than PIPE_BUF: each write is whole. */
    while (write(s->log_w, r, sizeof *r) < 0 && errno == EINTR)
        ;
}

static void
service_set_busy(struct service *s, int busy)
{
    pthread_mutex_lock(&s->lock);
    s->busy = busy;
    if (!busy)
        pthread_cond_broadcast(&s->idle);
    pthread_mutex_unlock(&s->lock);
}

static void *
service_main(void *arg)
{
    struct service *s = arg;
    struct pollfd p[2] = {{.fd = s->uffd, .events = POLLIN}, {.fd = s->stop_r, .events = POLLIN}};
    prctl(PR_SET_NAME, "mmemu-uffd", 0, 0, 0);
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (p[1].revents)
            break;
        /* Set before read(): a syscall that a read() of ours releases (an
         * event's waiter) returns after this store, so whoever it returns
         * to sees busy until the message is logged (service_settle). */
        service_set_busy(s, 1);
        struct log_record r;
        memset(&r, 0, sizeof r);
        while (read(s->uffd, &r.msg, sizeof r.msg) == (ssize_t)sizeof r.msg) {
            pthread_mutex_lock(&s->lock);
            s->reads++;
            pthread_mutex_unlock(&s->lock);
            if (s->test_delay_us)
                usleep(s->test_delay_us);
            r.err = -1;                 /* "being resolved": its errno follows */
            log_write(s, &r);
            r.err = s->resolve ? resolve(s, &r.msg) : 0;
            memset(&r.msg, 0, sizeof r.msg);
            log_write(s, &r);
        }
        service_set_busy(s, 0);
    }
    /* From here on the task is no longer a service thread for a fork. */
    prctl(PR_SET_NAME, "mmemu-uffd-end", 0, 0, 0);
    return NULL;
}

/* ---- the Python face: a capsule holding the service ---------------------- */

static void
service_destroy(struct service *s)
{
    pthread_cond_destroy(&s->idle);
    pthread_mutex_destroy(&s->lock);
    close(s->stop_r);
    close(s->stop_w);
    close(s->log_r);
    close(s->log_w);
    free(s);
}

PyDoc_STRVAR(service_start_doc,
"start(uffd, copy, fill, resolve=True) -> (handle, log_fd)\n\n"
"Start a service thread on the userfaultfd `uffd` (which must be\n"
"O_NONBLOCK): missing faults get COPY of `fill` bytes when `copy`, else\n"
"ZEROPAGE; with resolve false it only reads and logs (nothing resolved,\n"
"no FORK context closed). log_fd (non-blocking) yields 40-byte records: a\n"
"struct uffd_msg and an int32 -1 when a message arrives, then a zeroed\n"
"message and the int32 errno of its resolution (0 when resolved).");

static PyObject *
service_start(PyObject *self, PyObject *args)
{
    int uffd, copy, fill, resolve = 1;
    int p[2], l[2];
    (void)self;
    if (!PyArg_ParseTuple(args, "ipi|p:start", &uffd, &copy, &fill, &resolve))
        return NULL;
    if (fill < 0 || fill > 255) {
        PyErr_SetString(PyExc_ValueError, "fill is a byte");
        return NULL;
    }
    struct service *s = calloc(1, sizeof *s);
    if (s == NULL)
        return PyErr_NoMemory();
    if (pipe2(p, O_CLOEXEC) < 0) {
        free(s);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (pipe2(l, O_CLOEXEC) < 0) {
        int err = errno;
        close(p[0]);
        close(p[1]);
        free(s);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    fcntl(l[0], F_SETFL, fcntl(l[0], F_GETFL) | O_NONBLOCK);
    /* Room for ~26000 records between two reads of the log (the default
     * 64 KiB holds ~1600); the default stays if pipe-max-size refuses. */
    fcntl(l[1], F_SETPIPE_SZ, 1 << 20);
    pthread_mutex_init(&s->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->idle, &ca);
    pthread_condattr_destroy(&ca);
    s->uffd = uffd;
    s->stop_r = p[0];
    s->stop_w = p[1];
    s->log_r = l[0];
    s->log_w = l[1];
    s->copy = copy;
    s->resolve = resolve;
    const char *delay = getenv("MMEMU_TEST_SERVICE_LOG_DELAY_US");
    s->test_delay_us = delay ? (unsigned)strtoul(delay, NULL, 10) : 0;
    memset(s->page, fill, SERVICE_PAGE_SIZE);
    int rc = pthread_create(&s->thread, NULL, service_main, s);
    if (rc != 0) {
        service_destroy(s);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(Ki)", (unsigned long long)(uintptr_t)s, s->log_r);
}

PyDoc_STRVAR(service_stop_doc,
"stop(handle) -> bytes\n\n"
"End the service thread, wait for it, and free it. Returns the log records\n"
"not read yet: the thread leaves only from poll(), so these are all it\n"
"logged, every message it read included (its log fd is closed).");

static PyObject *
service_stop(PyObject *self, PyObject *args)
{
    unsigned long long h;
    (void)self;
    if (!PyArg_ParseTuple(args, "K:stop", &h))
        return NULL;
    struct service *s = (struct service *)(uintptr_t)h;
    char b = 1;
    while (write(s->stop_w, &b, 1) < 0 && errno == EINTR)
        ;
    /* Drain the log while waiting: a thread blocked writing to a full log
     * pipe would never get back to poll() to see the stop byte. */
    char *acc = NULL;
    size_t len = 0, cap = 0;
    int nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int joined = 0, last = 0; !last;) {
        last = joined;
        char buf[4096];
        ssize_t n;
        while ((n = read(s->log_r, buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR)) {
            if (n <= 0)
                continue;
            if (len + (size_t)n > cap) {
                size_t want = cap ? 2 * cap : sizeof buf;
                while (want < len + (size_t)n)
                    want *= 2;
                char *grown = realloc(acc, want);
                if (grown == NULL) {
                    nomem = 1;
                    continue;           /* keep draining so the thread can end */
                }
                acc = grown;
                cap = want;
            }
            memcpy(acc + len, buf, (size_t)n);
            len += (size_t)n;
        }
        if (!joined) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 10 * 1000 * 1000;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec += 1;
                until.tv_nsec -= 1000000000L;
            }
            joined = pthread_timedjoin_np(s->thread, NULL, &until) == 0;
        }
    }
    Py_END_ALLOW_THREADS
    service_destroy(s);
    PyObject *rest = nomem ? PyErr_NoMemory()
                           : PyBytes_FromStringAndSize(acc ? acc : "", (Py_ssize_t)len);
    free(acc);
    return rest;
}

PyDoc_STRVAR(service_settle_doc,
"settle(handle, timeout) -> bool\n\n"
"Wait (without the GIL) until the thread has logged every message it has\n"
"read: true once it is back in poll(), false if `timeout` seconds passed.\n"
"After a syscall that waited for its event to be read has returned, a true\n"
"settle() means that event is in the log.");

static PyObject *
service_settle(PyObject *self, PyObject *args)
{
    unsigned long long h;
    double timeout;
    (void)self;
    if (!PyArg_ParseTuple(args, "Kd:settle", &h, &timeout))
        return NULL;
    struct service *s = (struct service *)(uintptr_t)h;
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)timeout;
    until.tv_nsec += (long)((timeout - (double)(time_t)timeout) * 1e9);
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    int idle;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&s->lock);
    while (s->busy && pthread_cond_timedwait(&s->idle, &s->lock, &until) == 0)
        ;
    idle = !s->busy;
    pthread_mutex_unlock(&s->lock);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(idle);
}

PyDoc_STRVAR(service_state_doc,
"state(handle) -> (busy, reads)\n\n"
"busy: the thread is between a read() and the last record it led to;\n"
"reads: how many messages it has read. Taken together, under its lock.");

static PyObject *
service_state(PyObject *self, PyObject *args)
{
    unsigned long long h;
    (void)self;
    if (!PyArg_ParseTuple(args, "K:state", &h))
        return NULL;
    struct service *s = (struct service *)(uintptr_t)h;
    pthread_mutex_lock(&s->lock);
    int busy = s->busy;
    unsigned long reads = s->reads;
    pthread_mutex_unlock(&s->lock);
    return Py_BuildValue("(Nk)", PyBool_FromLong(busy), reads);
}

static PyMethodDef service_methods[] = {
    {"start", service_start, METH_VARARGS, service_start_doc},
    {"settle", service_settle, METH_VARARGS, service_settle_doc},
    {"state", service_state, METH_VARARGS, service_state_doc},
    {"stop", service_stop, METH_VARARGS, service_stop_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef service_module = {
    PyModuleDef_HEAD_INIT,
    "mmemu.host._service",
    "A userfaultfd service thread in C (host oracle): the Resolver's rules.",
    -1,
    service_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__service(void)
{
    PyObject *m = PyModule_Create(&service_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "RECORD_SIZE", (long)sizeof(struct log_record)) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
