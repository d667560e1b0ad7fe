"""The sandbox's first process (stdlib only, run as ``python -I -S _sandbox_init.py CONFIG_JSON`` with the
program on stdin, as root, in an empty environment). ``filters.verifiers.sandbox.run_code`` starts it.

It unshares mount, pid, network, IPC and UTS namespaces, forks the new pid namespace's init (pid 1), which
makes every mount read-only, mounts private tmpfs over ``/tmp`` and ``/dev/shm`` (and empty ones over the
``hide`` folders), writes the program into ``/tmp/work`` and forks the program as a user id of its own
(``UID_BASE`` + this process's host pid, so no other live run has it) with rlimits, then waits for it. When
pid 1 exits, the kernel kills whatever the program left in the namespace; SIGTERM to this process
(the caller's stop) kills pid 1 and returns only once the namespace is empty. Exit status: the program's, or
128 + signal, or 125 when the sandbox could not be set up (the reason on stderr).
"""

import ctypes
import json
import os
import resource
import signal
import sys

UID_BASE = 200_000
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG = 1
SETUP_FAILED = 125

libc = ctypes.CDLL(None, use_errno=True)


def fail(what):
    err = ctypes.get_errno()
    sys.stderr.write(f"sandbox setup failed: {what}: {os.strerror(err) if err else ''}\n")
    sys.stderr.flush()
    os._exit(SETUP_FAILED)


def enc(s):
    return s.encode() if s is not None else None


def mount(src, target, fstype, flags, data=None):
    return libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) == 0


def mountpoints():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 for a space
            opts = fields[5].split(",")
            flags = (MS_NOSUID * ("nosuid" in opts) | MS_NODEV * ("nodev" in opts)
                     | MS_NOEXEC * ("noexec" in opts))
            yield point, flags


def setup_fs(cfg, uid):
    if not mount(None, "/", None, MS_REC | MS_PRIVATE):
        fail("private mounts")
    if not mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
        fail("mount /proc")
    for point, flags in list(mountpoints()):  # read-only everywhere (errors: pseudo file systems that refuse)
        mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    tmp_opts = f"size={cfg['tmp_mb']}m,nr_inodes=4096,mode=1777"
    for point in ("/tmp", "/dev/shm"):
        if os.path.isdir(point) and not mount("tmpfs", point, "tmpfs", MS_NOSUID | MS_NODEV, tmp_opts):
            fail(f"mount {point}")
    python = "/tmp/.python"  # the interpreter's install, reachable whatever the permissions above it
    os.mkdir(python, 0o755)
    if not (mount(cfg["prefix"], python, None, MS_BIND | MS_REC)
            and mount(None, python, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)):
        fail("bind the interpreter")
    for point in cfg["hide"]:
        if os.path.isdir(point) and not mount("tmpfs", point, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k"):
            fail(f"hide {point}")
    work = "/tmp/work"
    os.mkdir(work, 0o700)
    os.chown(work, uid, uid)
    os.chmod("/tmp", 0o1777)
    return python + cfg["python"][len(cfg["prefix"]):], work


def limit(cfg):
    cpu = int(cfg["cpu_s"])
    mem = cfg["memory_mb"] * 2**20
    for which, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (mem, mem)),
                         (resource.RLIMIT_DATA, (mem, mem)), (resource.RLIMIT_NPROC, (cfg["max_procs"],) * 2),
                         (resource.RLIMIT_FSIZE, (cfg["file_mb"] * 2**20,) * 2),
                         (resource.RLIMIT_NOFILE, (64, 64)), (resource.RLIMIT_CORE, (0, 0)),
                         (resource.RLIMIT_MEMLOCK, (0, 0))):
        resource.setrlimit(which, value)


def run_program(cfg, program, uid):
    python, work = setup_fs(cfg, uid)
    path = os.path.join(work, "main.py")
    with open(path, "wb") as f:
        f.write(program)
    os.chown(path, uid, uid)
    child = os.fork()
    if child == 0:
        try:
            os.setsid()
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
            limit(cfg)
            os.chdir(work)
            os.execve(python, [python, "-I", "-S", "-B", "main.py"], {})
        except BaseException as e:  # noqa: BLE001 - any failure here is a setup failure
            sys.stderr.write(f"sandbox setup failed: {e!r}\n")
            sys.stderr.flush()
        os._exit(SETUP_FAILED)
    while True:  # pid 1: reap orphans until the program itself ends
        pid, status = os.wait()
        if pid == child:
            return status


def main():
    init = 0
    def stop(*_):  # the caller's kill: end pid 1, then reap it, so that the namespace is empty when we exit
        if init:
            os.kill(init, signal.SIGKILL)
        else:
            os._exit(128 + signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    cfg = json.loads(sys.argv[1])
    program = sys.stdin.buffer.read()
    uid = UID_BASE + os.getpid()
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    if libc.unshare(flags) != 0:
        fail("unshare")
    init = os.fork()  # pid 1 of the new pid namespace
    if init == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        status = run_program(cfg, program, uid)
        os._exit(status_code(status))
    _, status = os.waitpid(init, 0)  # returns once every process of the namespace is gone
    os._exit(status_code(status))


def status_code(status):
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    main()
