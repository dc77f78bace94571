/* mmemu.host._access: guarded user-mode accesses on the real process memory.
 *
 * read(addr, n) and write(addr, data) copy with the CPU, as a user program
 * would, so every fault goes through the real kernel's fault path.  A fault
 * the kernel turns into SIGSEGV/SIGBUS is caught by a temporary handler
 * (installed per call, the previous one restored afterwards: pytest's
 * faulthandler keeps its own) and raised as mmemu.errors.Sigsegv/Sigbus with
 * si_addr and si_code.
 *
 * fork_sibling() is fork() with CLONE_PARENT, so every server process of a
 * HostMachine is a child of the driver, which can reap it.  A raw clone
 * skips what glibc's fork() does for a process with threads (take every
 * malloc arena lock, the stdio and loader locks, and reset them in the
 * child), so it copies whatever lock another thread holds at that instant:
 * a server thread ending (it frees its Python thread state into main_arena
 * after dropping the GIL) made a child hang forever on main_arena in
 * PyOS_AfterFork_Child.  fork_sibling therefore clones only when every
 * other thread is one that cannot be inside the C library: a thread with
 * a Python thread state (it needs the GIL, which the caller holds, to run
 * any code that allocates), a service thread ("mmemu-uffd", _service.c) or
 * an io_uring worker (kernel only).  Anything else is a thread starting or
 * ending, and is waited for.
 *
 * Fault accounting: the kernel counts a process's minor faults per task
 * (task->min_flt, /proc/pid/stat field 10, getrusage ru_minflt).  A server
 * is a Python runtime whose own heap faults too (every page it writes after
 * a fork is a COW fault), so the raw counter cannot tell the program's
 * faults from the runtime's.  Every call here that touches program memory
 * (the accesses, and the syscalls made through syscall_counted: mmap with
 * MAP_POPULATE, madvise, vmsplice, io_uring registration, /proc/self/mem)
 * reads the thread's counter just before and just after the kernel or CPU
 * touches that memory, with no Python code in between, and adds the
 * difference to program_faults.  faults() is that sum: field 10 with the
 * runtime's faults taken out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <time.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <pthread.h>

#define ACCESS_PAGE_SIZE 4096UL

/* Per-thread state of the access in progress.  Only the thread that armed
 * the handler jumps; a fault anywhere else goes to the previous handler. */
static __thread sigjmp_buf access_env;
static __thread volatile sig_atomic_t access_armed;
static __thread volatile int fault_signo;
static __thread volatile uintptr_t fault_addr;
static __thread volatile int fault_code;

static struct sigaction saved_segv, saved_bus;

/* Minor faults taken inside the windows described above (this process). */
static volatile unsigned long long program_faults;

static long
thread_minflt(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) != 0)
        return 0;
    return ru.ru_minflt;
}

/* Make the stack below us present and private before a window opens: after
 * fork every stack page is COW-shared, and a signal frame pushed there by a
 * fault of the access would take a fault of its own inside the window. */
static __attribute__((noinline)) void
access_prefault_stack(void)
{
    program_faults += 0;    /* volatile below: the .bss page is written now */
    fault_signo = 0;        /* and this thread's TLS block */
    volatile char pad[32 * 1024];
    for (size_t i = 0; i < sizeof(pad); i += 512)
        pad[i] = 0;
    __asm__ __volatile__("" ::: "memory");
}

static void
access_handler(int signo, siginfo_t *info, void *uctx)
{
    (void)uctx;
    if (!access_armed) {
        /* Not our access: put the previous disposition back and return, so
         * the faulting instruction runs again under it. */
        sigaction(signo, signo == SIGSEGV ? &saved_segv : &saved_bus, NULL);
        return;
    }
    access_armed = 0;
    fault_signo = signo;
    fault_addr = (uintptr_t)info->si_addr;
    fault_code = info->si_code;
    siglongjmp(access_env, 1);
}

static int
access_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = access_handler;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGSEGV, &sa, &saved_segv) != 0)
        return -1;
    if (sigaction(SIGBUS, &sa, &saved_bus) != 0) {
        sigaction(SIGSEGV, &saved_segv, NULL);
        return -1;
    }
    return 0;
}

static void
access_restore(void)
{
    sigaction(SIGBUS, &saved_bus, NULL);
    sigaction(SIGSEGV, &saved_segv, NULL);
}

/* Raise mmemu.errors.Sigsegv / Sigbus(addr, si_code). */
static PyObject *
access_raise_fault(int signo, uintptr_t addr, int code)
{
    PyObject *mod = PyImport_ImportModule("mmemu.errors");
    if (mod == NULL)
        return NULL;
    PyObject *cls = PyObject_GetAttrString(mod, signo == SIGBUS ? "Sigbus" : "Sigsegv");
    Py_DECREF(mod);
    if (cls == NULL)
        return NULL;
    PyObject *exc = PyObject_CallFunction(cls, "Ki", (unsigned long long)addr, code);
    if (exc != NULL) {
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    Py_DECREF(cls);
    return NULL;
}

static int
access_parse_addr(PyObject *obj, uintptr_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uintptr_t)v;
    return 0;
}

/* Copy page chunk by page chunk, touching each chunk's first byte alone
 * before the bulk copy: memcpy may load a chunk's tail first, and si_addr
 * must be the first byte of the first page that faults, as the engine
 * reports it. */
static void
access_copy(volatile char *dst, const volatile char *src, size_t n, int to_user)
{
    size_t done = 0;
    while (done < n) {
        uintptr_t at = to_user ? (uintptr_t)(dst + done) : (uintptr_t)(src + done);
        size_t chunk = ACCESS_PAGE_SIZE - (at & (ACCESS_PAGE_SIZE - 1));
        if (chunk > n - done)
            chunk = n - done;
        dst[done] = src[done];
        __asm__ __volatile__("" ::: "memory");   /* the probe stays first */
        if (chunk > 1)
            memcpy((char *)dst + done + 1, (const char *)src + done + 1, chunk - 1);
        done += chunk;
    }
}

/* The guarded copy behind read() and write(): handlers installed by the
 * caller, the fault window open only around the copy, the GIL let go during
 * it (a fault may sleep in the kernel, e.g. a userfaultfd wait, while the
 * server's loop serves on). Returns 0, or 1 after a fault (fault_* set);
 * the handlers are restored either way. */
static int
access_guarded_copy(volatile char *dst, const volatile char *src, size_t n, int is_write)
{
    access_prefault_stack();
    volatile long before = 0;
    PyThreadState *volatile ts = NULL;
    volatile int faulted = 1;
    if (sigsetjmp(access_env, 1) == 0) {
        /* sigsetjmp wrote this thread's TLS (a COW fault after fork):
         * the window opens only now. */
        access_armed = 0;
        ts = PyEval_SaveThread();
        before = thread_minflt();
        access_armed = 1;
        access_copy(dst, src, n, is_write);
        access_armed = 0;
        faulted = 0;
    }
    program_faults += thread_minflt() - before;
    if (ts != NULL)
        PyEval_RestoreThread(ts);
    access_restore();
    return faulted;
}

PyDoc_STRVAR(access_read_doc,
"read(addr, n) -> bytes\n\n"
"Load n bytes at addr with the CPU. A fault raises mmemu.Sigsegv or\n"
"mmemu.Sigbus carrying si_addr and si_code.");

static PyObject *
access_read(PyObject *self, PyObject *args)
{
    PyObject *addr_obj;
    Py_ssize_t n;
    uintptr_t addr;
    (void)self;
    if (!PyArg_ParseTuple(args, "On:read", &addr_obj, &n))
        return NULL;
    if (access_parse_addr(addr_obj, &addr) < 0)
        return NULL;
    if (n < 0) {
        PyErr_SetString(PyExc_ValueError, "negative length");
        return NULL;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out == NULL)
        return NULL;
    if (n == 0)
        return out;
    char *volatile buf = PyBytes_AS_STRING(out);
    memset(buf, 0, (size_t)n);     /* our own buffer faults outside the window */
    if (access_install() < 0) {
        Py_DECREF(out);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (access_guarded_copy(buf, (const volatile char *)addr, (size_t)n, 0) == 0)
        return out;
    Py_DECREF(out);
    return access_raise_fault(fault_signo, fault_addr, fault_code);
}

PyDoc_STRVAR(access_write_doc,
"write(addr, data) -> None\n\n"
"Store data at addr with the CPU, page by page in address order (a fault\n"
"leaves the earlier pages written, as on Linux). A fault raises\n"
"mmemu.Sigsegv or mmemu.Sigbus carrying si_addr and si_code.");

static PyObject *
access_write(PyObject *self, PyObject *args)
{
    PyObject *addr_obj;
    Py_buffer data;
    uintptr_t addr;
    (void)self;
    if (!PyArg_ParseTuple(args, "Oy*:write", &addr_obj, &data))
        return NULL;
    if (access_parse_addr(addr_obj, &addr) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (data.len == 0) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    if (access_install() < 0) {
        PyBuffer_Release(&data);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int faulted = access_guarded_copy((volatile char *)addr, (const volatile char *)data.buf,
                                      (size_t)data.len, 1);
    PyBuffer_Release(&data);
    if (!faulted)
        Py_RETURN_NONE;
    return access_raise_fault(fault_signo, fault_addr, fault_code);
}

/* glibc's fork() passes CLONE_CHILD_SETTID with the address of the tid that
 * it caches in struct pthread (raise() and recursive mutexes read it).  The
 * raw clone below must do the same or the child keeps its parent's tid.
 * The field has no public address: find the one int equal to gettid() near
 * pthread_self() (offset 720 on glibc 2.36); if not exactly one, skip. */
static pid_t *
access_tid_slot(void)
{
    pid_t tid = (pid_t)syscall(SYS_gettid);
    pid_t *base = (pid_t *)pthread_self();
    pid_t *found = NULL;
    for (size_t i = 0; i < 1024 / sizeof(pid_t); i++) {
        if (base[i] == tid) {
            if (found != NULL)
                return NULL;
            found = &base[i];
        }
    }
    return found;
}

/* PF_IO_WORKER (include/linux/sched.h): an io_uring worker, a thread of
 * the process that never runs user code. */
#define FORK_PF_IO_WORKER 0x00000010UL

/* Tasks of this process that may run C library code the caller cannot see:
 * all but service threads and io_uring workers (the caller and the other
 * Python threads included; the caller compares with the Python threads).
 * Their "tid(comm)" go to `who`.  -1 if /proc/self/task cannot be read. */
static int
fork_other_tasks(char *who, size_t whosz)
{
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    int n = 0;
    size_t used = 0;
    who[0] = '\0';
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;                   /* gone meanwhile */
        ssize_t k = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (k <= 0)
            continue;
        buf[k] = '\0';
        char *lp = strchr(buf, '('), *rp = strrchr(buf, ')');
        unsigned long flags = 0;
        /* after "comm) ": state ppid pgrp session tty_nr tpgid flags */
        if (lp == NULL || rp == NULL ||
            sscanf(rp + 1, " %*c %*d %*d %*d %*d %*d %lu", &flags) != 1)
            continue;
        int clen = (int)(rp - lp - 1);
        if (flags & FORK_PF_IO_WORKER)
            continue;
        if (clen == 10 && memcmp(lp + 1, "mmemu-uffd", 10) == 0)
            continue;
        n++;
        if (used + 40 < whosz)
            used += (size_t)snprintf(who + used, whosz - used, "%s%s(%.*s)", used ? " " : "",
                                     e->d_name, clen > 16 ? 16 : clen, lp + 1);
    }
    closedir(d);
    return n;
}

static int
fork_python_threads(void)
{
    int n = 0;
    PyInterpreterState *interp = PyThreadState_GetInterpreter(PyThreadState_Get());
    for (PyThreadState *t = PyInterpreterState_ThreadHead(interp); t != NULL;
         t = PyThreadState_Next(t))
        n++;
    return n;
}

/* With the GIL held throughout (no Python thread can start to end), wait
 * until every task is the caller, another Python thread or one that never
 * enters the C library.  0, or -1 with `who` naming the others. */
static int
fork_wait_quiescent(double timeout, char *who, size_t whosz)
{
    struct timespec now, until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)timeout;
    for (;;) {
        int others = fork_other_tasks(who, whosz);
        if (others < 0 || others <= fork_python_threads())
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > until.tv_sec ||
            (now.tv_sec == until.tv_sec && now.tv_nsec >= until.tv_nsec))
            return -1;
        struct timespec pause = {0, 100 * 1000};
        nanosleep(&pause, NULL);
    }
}

PyDoc_STRVAR(access_fork_sibling_doc,
"fork_sibling(timeout=5.0) -> int\n\n"
"fork() with CLONE_PARENT: the child's parent is the caller's parent, so\n"
"a driver can reap every process of a tree it did not fork itself. The\n"
"address space is copied exactly as by fork() (no CLONE_VM). Returns 0 in\n"
"the child and the child's pid in the caller. Unlike glibc's fork() it\n"
"takes no C-library lock first (Python's own at-fork work is done), so it\n"
"waits, up to `timeout` seconds, until no thread can be holding one: every\n"
"other thread has a Python thread state or is a service thread. Past the\n"
"timeout: RuntimeError naming the other threads.");

static PyObject *
access_fork_sibling(PyObject *self, PyObject *args)
{
    (void)self;
    double timeout = 5.0;
    if (!PyArg_ParseTuple(args, "|d:fork_sibling", &timeout))
        return NULL;
    pid_t *slot = access_tid_slot();
    unsigned long flags = CLONE_PARENT | SIGCHLD;
    if (slot != NULL)
        flags |= CLONE_CHILD_SETTID;
    PyOS_BeforeFork();
    /* After PyOS_BeforeFork: its at-fork hooks may drop the GIL; from here
     * to the clone nothing does. */
    char who[512];
    if (fork_wait_quiescent(timeout, who, sizeof who) < 0) {
        PyOS_AfterFork_Parent();
        return PyErr_Format(PyExc_RuntimeError,
                            "fork: after %.1f s, threads of the server that are neither Python "
                            "nor service threads are still running (%s): a raw clone would copy "
                            "any C-library lock they hold", timeout, who);
    }
    long pid = syscall(SYS_clone, flags, 0UL, NULL, slot, 0UL);
    int err = errno;
    if (pid == 0) {
        program_faults = 0;        /* copy_process: a new task starts at 0 */
        PyOS_AfterFork_Child();
        return PyLong_FromLong(0);
    }
    PyOS_AfterFork_Parent();
    if (pid < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(pid);
}

/* ---- test hook: a thread inside malloc when the server forks ------------- */

struct test_malloc_thread {
    void *chunk;
    double seconds;
    int *started;           /* the caller's, set once at the start */
};

static void *
test_malloc_thread_main(void *arg)
{
    struct test_malloc_thread *t = arg;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t size = 64 * 1024;
    __atomic_store_n(t->started, 1, __ATOMIC_RELEASE);
    do {
        /* The chunk is main_arena's (the caller made it): every realloc
         * takes main_arena's lock, as the free of a thread state does. */
        for (int i = 0; i < 1000; i++) {
            size ^= 4096;
            void *grown = realloc(t->chunk, size);
            if (grown != NULL)
                t->chunk = grown;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
    } while ((double)(now.tv_sec - t0.tv_sec) + 1e-9 * (double)(now.tv_nsec - t0.tv_nsec)
             < t->seconds);
    free(t->chunk);
    free(t);
    return NULL;
}

PyDoc_STRVAR(access__test_malloc_thread_doc,
"_test_malloc_thread(seconds)\n\n"
"Test hook: a detached C thread that keeps taking and dropping main_arena's\n"
"lock (realloc of a chunk the caller allocated) for `seconds`, then ends,\n"
"as a server thread that frees its thread state on its way out does.");

static PyObject *
access__test_malloc_thread(PyObject *self, PyObject *args)
{
    double seconds;
    (void)self;
    if (!PyArg_ParseTuple(args, "d:_test_malloc_thread", &seconds))
        return NULL;
    struct test_malloc_thread *t = malloc(sizeof *t);
    if (t == NULL)
        return PyErr_NoMemory();
    t->chunk = malloc(64 * 1024);
    t->seconds = seconds;
    int started = 0;
    t->started = &started;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    int rc = pthread_create(&th, &attr, test_malloc_thread_main, t);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        free(t->chunk);
        free(t);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Back only once the thread is in its loop. */
    while (!__atomic_load_n(&started, __ATOMIC_ACQUIRE))
        sched_yield();
    Py_RETURN_NONE;
}

PyDoc_STRVAR(access_syscall_counted_doc,
"syscall_counted(nr, *args) -> int\n\n"
"syscall(2) with up to six integer arguments (pointers as addresses); the\n"
"minor faults it takes count as the program's (see faults()). Raises\n"
"OSError with the errno on failure.");

static PyObject *
access_syscall_counted(PyObject *self, PyObject *args)
{
    long nr;
    unsigned long long a[6] = {0, 0, 0, 0, 0, 0};
    (void)self;
    if (!PyArg_ParseTuple(args, "l|KKKKKK:syscall_counted", &nr, &a[0], &a[1], &a[2], &a[3],
                          &a[4], &a[5]))
        return NULL;
    access_prefault_stack();
    long before, after, ret;
    int err;
    /* Without the GIL: the call may sleep in a userfault (MADV_POPULATE_*
     * on a registered range) while the server's loop serves on. */
    Py_BEGIN_ALLOW_THREADS
    before = thread_minflt();
    ret = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    err = errno;
    after = thread_minflt();
    Py_END_ALLOW_THREADS
    program_faults += after - before;
    if (ret == -1) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLong((unsigned long)ret);
}

PyDoc_STRVAR(access_faults_doc,
"faults() -> int\n\n"
"Minor faults this process took on program memory: the sum, over every\n"
"access and counted syscall, of the thread's min_flt difference across it.");

static PyObject *
access_faults(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyLong_FromUnsignedLongLong(program_faults);
}

static PyMethodDef access_methods[] = {
    {"syscall_counted", access_syscall_counted, METH_VARARGS, access_syscall_counted_doc},
    {"faults", access_faults, METH_NOARGS, access_faults_doc},
    {"read", access_read, METH_VARARGS, access_read_doc},
    {"write", access_write, METH_VARARGS, access_write_doc},
    {"fork_sibling", access_fork_sibling, METH_VARARGS, access_fork_sibling_doc},
    {"_test_malloc_thread", access__test_malloc_thread, METH_VARARGS,
     access__test_malloc_thread_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef access_module = {
    PyModuleDef_HEAD_INIT,
    "mmemu.host._access",
    "Guarded user-mode accesses on the real process memory (host oracle).",
    -1,
    access_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__access(void)
{
    PyObject *m = PyModule_Create(&access_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "PAGE_SIZE", (long)ACCESS_PAGE_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
