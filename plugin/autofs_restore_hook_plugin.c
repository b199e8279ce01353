/*
 * autofs-restore-hook.so - a thin CRIU plugin that runs autofs-restore-hook
 * at the two moments of a restore where it acts, so that every restore on
 * the node (criu restore, runc, crun, podman, CRI-O: CRIU loads each *.so of
 * its plugin directory, /usr/lib/criu by default) is fixed without wiring an
 * action script or an OCI hook.
 *
 * - RESUME_DEVICES_LATE, which CRIU calls once per restored task after they
 *   are all restored and stopped under its ptrace, the root task first and
 *   before the pre-resume action scripts: for the first call of a restore
 *   (the root task: the container's init) the binary runs as the action
 *   script would, CRTOOLS_SCRIPT_ACTION=pre-resume CRTOOLS_INIT_PID=<pid>,
 *   and CRIU waits for it, at most ARH_TIMEOUT_MS (then it is killed with
 *   its process group).
 * - exit(RESTORE, 0), called when the restore succeeded and the tasks run:
 *   the binary is started for post-resume, detached (CRIU does not wait).
 * - init(RESTORE), on a host whose /sys/fs/cgroup is the unified hierarchy
 *   only: CRIU must find the cgroups a restored systemd watched before it
 *   opens the container's files, which the binary makes at the
 *   post-setup-namespaces action (hook/cgroups.go). No plugin hook runs
 *   then, so the plugin adds the binary to this restore's action scripts
 *   with CRIU's add_script (exported, as every function of CRIU, which is
 *   linked with -rdynamic). CRIU runs a script at every action, waits for
 *   it without a deadline and fails the restore when it fails: only the
 *   binary compiled in is added (never AUTOFS_RESTORE_HOOK_PLUGIN_BIN's),
 *   whose constructor answers the other actions at once, which exits 0 in
 *   CRIU's mode and bounds its step. CRIU before 3.19 aborts when a script
 *   is added while a runtime drives it by RPC (runc, crun): add_script is
 *   called only where rpc_query_external_files, which 3.19 brought with
 *   that fix, is exported too.
 *
 * AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS, set in CRIU's environment, names the
 * actions the plugin runs the binary for in this restore, for the action
 * scripts CRIU runs after: post-setup-namespaces once the script is added
 * (the binary then logs wiring=criu-plugin there), pre-resume and
 * post-resume once the root task's RESUME_DEVICES_LATE reached the plugin
 * (an action script of ours then leaves them to it; a plugin before ours
 * in the chain that answers that hook keeps it from us, and the script
 * does them).
 *
 * It never fails anything: init returns 0, every hook returns -ENOTSUP (the
 * answer "not mine", so that a plugin after it, amdgpu or cuda, still gets
 * the call), a missing, failing or hanging binary leaves the restore going
 * on, with one line in CRIU's log (the binary it adds as action script on
 * a cgroup v2 host is the one exception: CRIU runs it as any action
 * script, so only the binary compiled in, which exits 0 there, is added).
 * It records nothing in the checkpoint's
 * inventory, so images made with it restore without it and the other way
 * round. It depends on nothing but libc; the descriptor is declared here
 * from CRIU's plugin interface: version 0.2.0 and hooks 0..9, which CRIU
 * 3.17 through 4.2 accept by their sources (tested: 4.1.1).
 *
 * Environment, read from CRIU's (for tests and operators):
 *   AUTOFS_RESTORE_HOOK_PLUGIN_BIN         the binary to run instead of the
 *                                          one compiled in (ARH_BINARY)
 *   AUTOFS_RESTORE_HOOK_PLUGIN_TIMEOUT_MS  the pre-resume deadline in ms
 *                                          (1..600000; default 60000)
 *   AUTOFS_RESTORE_HOOK_LOG_FILE, _LOG_LEVEL, _LOG_FORMAT, _NO_SYSLOG, _NESTED
 *   are passed on to the binary; nothing else of CRIU's environment is.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef ARH_BINARY
#define ARH_BINARY "/usr/libexec/oci/hooks.d/autofs-restore-hook"
#endif

#define EXPORTED __attribute__((visibility("default")))

/* CRIU's plugin interface, as documented by its criu-plugin.h. */
#define ARH_PLUGIN_VERSION ((0u << 16) + (2u << 8) + 0u) /* 0.2.0 */
enum { ARH_STAGE_DUMP = 0, ARH_STAGE_PRE_DUMP = 1, ARH_STAGE_RESTORE = 2 };
enum { ARH_HOOK_RESUME_DEVICES_LATE = 9, ARH_HOOKS = 10 };
/* CRIU's log levels (print_on_level). */
enum { ARH_LOG_WARN = 2, ARH_LOG_INFO = 3 };

struct arh_plugin_desc {
	const char *name;
	int (*init)(int stage);
	void (*exit)(int stage, int ret);
	unsigned int version;
	unsigned int max_hooks;
	void *hooks[ARH_HOOKS];
};

#define ARH_TIMEOUT_MS 60000	    /* pre-resume deadline */
#define ARH_TIMEOUT_MAX_MS 600000   /* bound of the override */
#define ARH_REAP_MS 5000	    /* waiting after SIGKILL, and for the
				     * intermediate child of post-resume */
#define ARH_ENV_TIMEOUT "AUTOFS_RESTORE_HOOK_PLUGIN_TIMEOUT_MS"
#define ARH_ENV_BIN "AUTOFS_RESTORE_HOOK_PLUGIN_BIN"
/* The binary's EnvPluginActions (hook/main.go). */
#define ARH_ENV_ACTIONS "AUTOFS_RESTORE_HOOK_PLUGIN_ACTIONS"
#define ARH_SCRIPT_ACTION "post-setup-namespaces"
#ifndef CGROUP2_SUPER_MAGIC
#define CGROUP2_SUPER_MAGIC 0x63677270
#endif

static const char *const passed_env[] = {
	"AUTOFS_RESTORE_HOOK_LOG_FILE",
	"AUTOFS_RESTORE_HOOK_LOG_LEVEL",
	"AUTOFS_RESTORE_HOOK_LOG_FORMAT",
	"AUTOFS_RESTORE_HOOK_NO_SYSLOG",
	"AUTOFS_RESTORE_HOOK_NESTED",
};
#define N_PASSED (sizeof(passed_env) / sizeof(passed_env[0]))

extern char **environ;

static int cur_stage = -1;
static int root_pid; /* the restored root task, once pre-resume ran */
static int script_added;

/*
 * One line into CRIU's own log (its print_on_level, when the running CRIU
 * exports it, as 3.17 and 4.x do), else one line to stderr.
 */
static void say(unsigned int level, const char *fmt, ...)
{
	void (*pol)(unsigned int, const char *, ...);
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	line[n] = '\0';
	pol = (void (*)(unsigned int, const char *, ...))dlsym(RTLD_DEFAULT, "print_on_level");
	if (pol) {
		pol(level, "%s", line);
		return;
	}
	if (level > ARH_LOG_WARN)
		return;
	/* A closed pipe on stderr must not kill CRIU with SIGPIPE. */
	sigset_t pipe_set, old, pending;
	sigemptyset(&pipe_set);
	sigaddset(&pipe_set, SIGPIPE);
	sigprocmask(SIG_BLOCK, &pipe_set, &old);
	sigpending(&pending);
	int was_pending = sigismember(&pending, SIGPIPE);
	if (write(STDERR_FILENO, line, n) < 0 && errno == EPIPE && !was_pending) {
		struct timespec zero = { 0, 0 };
		sigtimedwait(&pipe_set, NULL, &zero);
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

static long timeout_ms(void)
{
	const char *s = getenv(ARH_ENV_TIMEOUT);
	char *end;
	long v;

	if (!s || !*s)
		return ARH_TIMEOUT_MS;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 1)
		return ARH_TIMEOUT_MS;
	return v > ARH_TIMEOUT_MAX_MS ? ARH_TIMEOUT_MAX_MS : v;
}

static const char *binary(void)
{
	const char *b = getenv(ARH_ENV_BIN);

	return b && *b ? b : ARH_BINARY;
}

/* The binary's environment: exactly these, built before any fork. */
struct child_env {
	char action[64];
	char pid[48];
	char *envp[4 + N_PASSED + 1];
};

static void make_env(struct child_env *e, const char *action, int pid)
{
	size_t i, n = 0;

	snprintf(e->action, sizeof(e->action), "CRTOOLS_SCRIPT_ACTION=%s", action);
	snprintf(e->pid, sizeof(e->pid), "CRTOOLS_INIT_PID=%d", pid);
	e->envp[n++] = e->action;
	e->envp[n++] = e->pid;
	e->envp[n++] = "AUTOFS_RESTORE_HOOK_WIRING=criu-plugin";
	e->envp[n++] = "PATH=/usr/sbin:/usr/bin:/sbin:/bin";
	for (i = 0; i < N_PASSED; i++) {
		size_t len = strlen(passed_env[i]);
		char **p;
		for (p = environ; p && *p; p++) {
			if (!strncmp(*p, passed_env[i], len) && (*p)[len] == '=') {
				e->envp[n++] = *p;
				break;
			}
		}
	}
	e->envp[n] = NULL;
}

/*
 * In a forked child, async-signal-safe calls only: stdio on /dev/null, every
 * other fd closed, default signal dispositions and an empty mask, exec.
 * The child already leads its own process group (pre-resume) or session
 * (post-resume).
 */
static void exec_child(const char *bin, char *const envp[], int maxfd)
{
	char *const argv[] = { "autofs-restore-hook", NULL };
	struct sigaction dfl;
	sigset_t none;
	int fd, sig;

	fd = open("/dev/null", O_RDWR);
	if (fd < 0)
		_exit(126);
	if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		_exit(126);
#ifdef SYS_close_range
	if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0)
#endif
		for (fd = 3; fd < maxfd; fd++)
			close(fd);
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	for (sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* fails harmlessly for KILL, STOP, RT internals */
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(bin, argv, envp);
	_exit(127);
}

static int max_fd(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (1 << 24))
		return 1 << 20;
	return (int)rl.rlim_cur;
}

/*
 * Waits for child pid until deadline_ms (CLOCK_MONOTONIC), polling with
 * short sleeps: never a blocking wait. Returns 1 and the status when it was
 * reaped, 0 when the deadline passed, -1 on an error.
 */
static int wait_until(pid_t pid, long deadline_ms, int *status)
{
	long nap_us = 200;

	for (;;) {
		pid_t r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return 1;
		if (r < 0 && errno != EINTR)
			return -1;
		if (now_ms() >= deadline_ms)
			return 0;
		struct timespec ts = { 0, nap_us * 1000 };
		nanosleep(&ts, NULL);
		if (nap_us < 5000)
			nap_us *= 2;
	}
}

static void block_sigchld(sigset_t *old)
{
	sigset_t chld;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, old);
}

static void pre_resume(int pid)
{
	struct child_env env;
	const char *bin = binary();
	long start = now_ms(), limit = timeout_ms();
	sigset_t old;
	int status = 0, r, maxfd = max_fd();
	pid_t child;

	if (access(bin, X_OK)) {
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: cannot run %s (%s): pre-resume of pid %d skipped", bin,
		    strerror(errno), pid);
		return;
	}
	make_env(&env, "pre-resume", pid);
	/* As CRIU does around its own children: no SIGCHLD handler sees ours. */
	block_sigchld(&old);
	child = fork();
	if (child == 0) {
		/* Its own process group: the deadline kills what it started too. */
		setpgid(0, 0);
		exec_child(bin, env.envp, maxfd);
	}
	if (child > 0)
		setpgid(child, child); /* either of the two calls wins the race */
	if (child < 0) {
		int err = errno;
		sigprocmask(SIG_SETMASK, &old, NULL);
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: fork: %s: pre-resume of pid %d skipped", strerror(err), pid);
		return;
	}
	r = wait_until(child, start + limit, &status);
	if (r == 0) {
		kill(-child, SIGKILL);
		kill(child, SIGKILL);
		r = wait_until(child, now_ms() + ARH_REAP_MS, &status);
		sigprocmask(SIG_SETMASK, &old, NULL);
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: %s pre-resume for pid %d still ran after %ld ms: killed with its process group%s", bin,
		    pid, limit, r == 1 ? "" : " (not reaped yet)");
		return;
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (r < 0)
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: waiting for %s: %s", bin, strerror(errno));
	else if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
		say(ARH_LOG_INFO, "autofs-restore-hook plugin: pre-resume for pid %d done in %ld ms", pid, now_ms() - start);
	else if (WIFEXITED(status))
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: %s pre-resume for pid %d exited with status %d%s", bin, pid,
		    WEXITSTATUS(status), WEXITSTATUS(status) == 127 ? " (could not exec it)" : "");
	else
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: %s pre-resume for pid %d killed by signal %d", bin, pid,
		    WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* post-resume, detached: a double fork, the grandchild in its own session. */
static void post_resume(int pid)
{
	struct child_env env;
	const char *bin = binary();
	sigset_t old;
	int status = 0, r, maxfd = max_fd();
	pid_t child;

	if (access(bin, X_OK)) {
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: cannot run %s (%s): post-resume of pid %d skipped", bin,
		    strerror(errno), pid);
		return;
	}
	make_env(&env, "post-resume", pid);
	block_sigchld(&old);
	child = fork();
	if (child == 0) {
		pid_t g = fork();
		if (g == 0) {
			setsid();
			exec_child(bin, env.envp, maxfd);
		}
		_exit(g < 0 ? 1 : 0);
	}
	if (child < 0) {
		int err = errno;
		sigprocmask(SIG_SETMASK, &old, NULL);
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: fork: %s: post-resume of pid %d skipped", strerror(err), pid);
		return;
	}
	r = wait_until(child, now_ms() + ARH_REAP_MS, &status);
	if (r == 0) {
		kill(child, SIGKILL);
		r = wait_until(child, now_ms() + ARH_REAP_MS, &status);
	}
	sigprocmask(SIG_SETMASK, &old, NULL);
	if (r == 1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		say(ARH_LOG_INFO, "autofs-restore-hook plugin: post-resume for pid %d started", pid);
	else
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: could not start %s post-resume for pid %d", bin, pid);
}

/*
 * On a cgroup v2 host, the binary becomes this restore's action script for
 * post-setup-namespaces (see the top of this file). A CRIU that cannot take
 * it safely, or a binary that is not there, leaves the restore as it was,
 * with one line in CRIU's log: a script that cannot run would fail it.
 */
static void add_cgroup_script(void)
{
	int (*add)(char *);
	const char *bin = ARH_BINARY;
	struct statfs st;

	if (statfs("/sys/fs/cgroup", &st) || st.f_type != CGROUP2_SUPER_MAGIC)
		return;
	if (strcmp(binary(), bin)) {
		say(ARH_LOG_INFO, "autofs-restore-hook plugin: %s is set: the cgroup step of %s is not added", ARH_ENV_BIN, bin);
		return;
	}
	add = (int (*)(char *))dlsym(RTLD_DEFAULT, "add_script");
	if (!add || !dlsym(RTLD_DEFAULT, "rpc_query_external_files")) {
		say(ARH_LOG_INFO, "autofs-restore-hook plugin: this CRIU (before 3.19, or one that exports no add_script) cannot take "
				  "an action script from a plugin: the cgroups a systemd container watched are not prepared; "
				  "wire %s as action script for that",
		    bin);
		return;
	}
	if (access(bin, X_OK)) {
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: cannot run %s (%s): its cgroup step is not added", bin, strerror(errno));
		return;
	}
	if (add((char *)bin)) {
		say(ARH_LOG_WARN, "autofs-restore-hook plugin: could not add %s as action script: its cgroup step is not added", bin);
		return;
	}
	script_added = 1;
	setenv(ARH_ENV_ACTIONS, ARH_SCRIPT_ACTION, 1);
	say(ARH_LOG_INFO, "autofs-restore-hook plugin: %s added as action script for " ARH_SCRIPT_ACTION " (cgroup v2 host)", bin);
}

static int arh_init(int stage)
{
	cur_stage = stage;
	root_pid = 0;
	script_added = 0;
	if (stage == ARH_STAGE_RESTORE)
		add_cgroup_script();
	return 0;
}

static void arh_exit(int stage, int ret)
{
	if (stage == ARH_STAGE_RESTORE && ret == 0 && root_pid > 0)
		post_resume(root_pid);
	root_pid = 0;
}

static int arh_resume_devices_late(int pid)
{
	if (cur_stage == ARH_STAGE_RESTORE && root_pid == 0 && pid > 0) {
		/* CRIU calls the root task first: later calls are its children. */
		root_pid = pid;
		/* Before the pre-resume scripts: they leave both phases to us. */
		setenv(ARH_ENV_ACTIONS, script_added ? ARH_SCRIPT_ACTION " pre-resume post-resume" : "pre-resume post-resume", 1);
		pre_resume(pid);
	}
	return -ENOTSUP;
}

EXPORTED struct arh_plugin_desc CR_PLUGIN_DESC = {
	.name = "autofs-restore-hook",
	.init = arh_init,
	.exit = arh_exit,
	.version = ARH_PLUGIN_VERSION,
	.max_hooks = ARH_HOOKS,
	.hooks = { [ARH_HOOK_RESUME_DEVICES_LATE] = (void *)arh_resume_devices_late },
};
