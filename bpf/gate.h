// SPDX-License-Identifier: Apache-2.0
/* The start gate of `run -- CMD` and `top -- CMD`: a traced process that starts a Python
 * program (exec), and a Python process's forked child, is stopped with SIGSTOP until user
 * space has attached its per-process probes, then continued. The costly markers (audit,
 * function, line) are thus attached to the traced processes alone, so that no other process
 * on the host has them enabled (their semaphores stay 0), and each traced process is still
 * traced from its first instruction.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_GATE_H
#define PYUSDT_GATE_H

#define SIGSTOP_NR 19

/* The kernel's (include/linux/pid_types.h): libbpf matches a kfunc's prototype by type kinds,
 * so the argument must be an enum, as there. */
enum pid_type { PIDTYPE_PID, PIDTYPE_TGID, PIDTYPE_PGID, PIDTYPE_SID, PIDTYPE_MAX };

/* Set by user space while it holds processes at their start; cleared before its last drain,
 * after which it continues every process still held. */
bool gate_python = false;

/* Processes held: tgid -> 1 once stopped (0 while the signal is being sent: user space must
 * not continue a process before its stop is queued, or the stop would come after). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} gated SEC(".maps");

struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
} __attribute__((preserve_access_index));

struct linux_binprm {
	struct file *file;
} __attribute__((preserve_access_index));

struct mm_struct___exe {
	struct file *exe_file;
} __attribute__((preserve_access_index));

/* 6.13+: signals another task (the child, in the fork tracepoint that runs in its parent);
 * absent before, when forked children are not held (their start is followed within a poll). */
extern int bpf_send_signal_task(struct task_struct *task, int sig, enum pid_type type,
				__u64 value) __ksym __weak;

/* Whether `f` is named like a CPython interpreter (python, python3, python3.11, python3.9d …):
 * a shell, make or a compiler the command starts is never held. */
static __always_inline bool python_file(struct file *f)
{
	char name[8] = {};
	const unsigned char *p = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	if (!p || bpf_probe_read_kernel_str(name, sizeof(name), p) < 7)
		return false;
	return name[0] == 'p' && name[1] == 'y' && name[2] == 't' && name[3] == 'h' &&
	       name[4] == 'o' && name[5] == 'n';
}

/* Notes `tgid` as held: 0 before the stop is sent, 1 after. False when the table is full. */
static __always_inline bool gate_reserve(__u32 tgid)
{
	__u8 zero = 0;
	if (bpf_map_update_elem(&gated, &tgid, &zero, BPF_NOEXIST) == 0)
		return true;
	count(STAT_UNGATED);
	return false;
}

static __always_inline void gate_done(__u32 tgid, long sent)
{
	__u8 *held = bpf_map_lookup_elem(&gated, &tgid);
	if (sent < 0) {
		bpf_map_delete_elem(&gated, &tgid);
		count(STAT_UNGATED);
		return;
	}
	if (held)
		*held = 1;
	/* Wakes user space now (a bare header, read as an exec): its next look lets the process
	 * go. Lost when the ring is full: user space then looks within its drain interval. */
	struct event_header *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return;
	__u64 now = bpf_ktime_get_ns();
	fill_header(e, bpf_get_current_pid_tgid(), MARKER_EXEC, now, now, 0);
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

/* At exec, in the process itself: held when its new program is an interpreter. The stop is
 * delivered before its first instruction in user space. */
static __always_inline void gate_exec(__u32 tgid, struct linux_binprm *bprm)
{
	if (!gate_python || !bpf_map_lookup_elem(&traced, &tgid))
		return;
	if (!python_file(BPF_CORE_READ(bprm, file)) || !gate_reserve(tgid))
		return;
	gate_done(tgid, bpf_send_signal(SIGSTOP_NR));
}

/* At fork, in the parent: a new process (not a thread, not a vfork child sharing the parent's
 * memory until its exec) of a Python parent is held before it runs. */
static __always_inline void gate_fork(struct task_struct *parent, struct task_struct *child)
{
	if (!gate_python || !bpf_ksym_exists(bpf_send_signal_task) || !child)
		return;
	struct mm_struct *mm = BPF_CORE_READ(parent, mm);
	if (child->pid != child->tgid || !mm || BPF_CORE_READ(child, mm) == mm)
		return;
	struct file *exe = BPF_CORE_READ((struct mm_struct___exe *)mm, exe_file);
	__u32 tgid = child->tgid;
	if (!exe || !python_file(exe) || !gate_reserve(tgid))
		return;
	gate_done(tgid, bpf_send_signal_task(child, SIGSTOP_NR, PIDTYPE_TGID, 0));
}

#endif /* PYUSDT_GATE_H */
