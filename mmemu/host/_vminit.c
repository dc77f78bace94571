/* init of a mmemu oracle guest (mmemu.host.vm): PID 1 of a kernel booted
 * under QEMU. It loads the modules the initramfs carries (listed in
 * /modules.load, dependencies first), mounts the driver's root file system,
 * shared read-only over 9p, as the new root, with proc, sysfs, devtmpfs and
 * a tmpfs on /run (and the scratch disk, if any, on /var/tmp for swap files),
 * then runs the guest agent and reaps every orphan until the agent exits,
 * when it powers the machine off.
 *
 * Built by mmemu.host.vmimage with the host's cc -static; configured by the
 * kernel command line's NAME=value words, which the kernel hands to init as
 * its environment (MMEMU_PY, MMEMU_PATH, MMEMU_SCRATCH). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
    fprintf(stderr, "mmemu-init: %s: %s\n", what, strerror(errno));
    sync();
    reboot(RB_POWER_OFF);
    _exit(1);
}

static void load_modules(void)
{
    char line[512];
    FILE *f = fopen("/modules.load", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = 0;
        if (!line[0])
            continue;
        int fd = open(line, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            die(line);
        if (syscall(SYS_finit_module, fd, "", 0) && errno != EEXIST) {
            fprintf(stderr, "mmemu-init: finit_module %s: %s\n", line, strerror(errno));
            die("module");
        }
        close(fd);
    }
    fclose(f);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags,
                const char *data)
{
    if (mount(src, dst, type, flags, data)) {
        fprintf(stderr, "mmemu-init: mount %s on %s (%s): %s\n", src, dst, type, strerror(errno));
        die("mount");
    }
}

int main(void)
{
    const char *py = getenv("MMEMU_PY");
    const char *path = getenv("MMEMU_PATH");
    const char *scratch = getenv("MMEMU_SCRATCH");

    mkdir("/dev", 0755);
    mkdir("/proc", 0755);
    mkdir("/newroot", 0755);
    mnt("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    load_modules();
    mnt("hostroot", "/newroot", "9p", MS_RDONLY,
        "trans=virtio,version=9p2000.L,cache=loose,msize=512000");
    mnt("proc", "/newroot/proc", "proc", 0, NULL);
    mnt("sysfs", "/newroot/sys", "sysfs", 0, NULL);
    mnt("devtmpfs", "/newroot/dev", "devtmpfs", 0, NULL);
    /* The guest's writable space is a tmpfs on /run, not on /tmp: the
     * driver's code may live under the host's /tmp (a CI checkout), which
     * the guest must keep seeing. */
    mnt("tmpfs", "/newroot/run", "tmpfs", 0, "mode=1777");
    if (scratch && scratch[0])
        mnt(scratch, "/newroot/var/tmp", "ext4", 0, NULL);
    if (chroot("/newroot") || chdir("/run"))
        die("chroot");
    mkdir("/dev/shm", 01777);
    mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777");

    pid_t agent = fork();
    if (agent < 0)
        die("fork");
    if (agent == 0) {
        char *argv[] = {(char *)py, "-m", "mmemu.host.vmguest", NULL};
        setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
        setenv("HOME", "/run", 1);
        setenv("TMPDIR", "/run", 1);
        setenv("PYTHONDONTWRITEBYTECODE", "1", 1);
        if (path && path[0])
            setenv("PYTHONPATH", path, 1);
        execv(py, argv);
        die("exec of the agent");
    }
    for (;;) {
        int status;
        pid_t got = wait(&status);
        if (got == agent || (got < 0 && errno == ECHILD))
            break;
    }
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
