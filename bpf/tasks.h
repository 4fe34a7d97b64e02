// SPDX-License-Identifier: Apache-2.0
/* The scheduler tracepoints: follow `run`'s descendants, forget per-thread and per-process
 * state at exec and exit, and tell the agent of execs.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_TASKS_H
#define PYUSDT_TASKS_H

/* The sched tracepoints below are BTF-typed (tp_btf): libbpf finds them by their BTF id in
 * /sys/kernel/btf/vmlinux, with no tracefs or debugfs lookup, which a fresh host or a
 * container's /sys does not have. */

/* Loaded only for `pyusdt run` (autoload off otherwise). Runs in the parent's context. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(follow_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid;
	bool follow = bpf_map_lookup_elem(&traced, &ptgid) != NULL;
	__u32 ctgid = child->tgid;
	if (!follow && runner_ns_ino) {
		struct bpf_pidns_info ns = {};
		follow = bpf_get_ns_current_pid_tgid(runner_ns_dev, runner_ns_ino, &ns, sizeof(ns)) == 0 &&
			 ns.tgid == runner_ns_tgid;
		if (follow && !runner_first_child) {
			runner_first_child = ctgid;
			command_tgid = ctgid;
		}
	}
	if (!follow)
		return 0;
	__u8 one = 1;
	bpf_map_update_elem(&traced, &ctgid, &one, BPF_ANY);
	gate_fork(parent, child);
	return 0;
}

/* A new program image starts with no import or collection in progress, and is described
 * again at its first event (its command line and environment are new). The agent also hears
 * of it: a container's new interpreter file is attached within a poll, not at the next rescan.
 * The record is a bare header (a few bytes per exec); user space reads /proc/PID. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(forget_exec, struct task_struct *p, int old_pid, struct linux_binprm *bprm)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32;
	bpf_map_delete_elem(&gc_starts, &tid);
	bpf_map_delete_elem(&gc_stats_starts, &tid);
	bpf_map_delete_elem(&seen_tgids, &tgid);
	__sync_fetch_and_add(&processes_forgotten, 1);
	struct task_struct *task = bpf_get_current_task_btf();
	struct span_stack *st = bpf_task_storage_get(&span_stacks, task, 0, 0);
	if (st)
		release_imports(st);
	bpf_task_storage_delete(&span_stacks, task);
	if (time_calls)
		bpf_task_storage_delete(&time_stacks, task);
	if (report_execs) {
		struct event_header *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(STAT_DROP_EXEC);
			return 0; /* the periodic rescan still finds it */
		}
		__u64 now = bpf_ktime_get_ns();
		fill_header(e, id, MARKER_EXEC, now, now, 0);
		submit(e, sizeof(*e));
	}
	gate_exec(tgid, bprm);
	return 0;
}

/* Per-thread pairing state must not outlive the thread (tids are reused). */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(forget_exited, struct task_struct *p)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	__u32 tgid = id >> 32;
	bpf_map_delete_elem(&gc_starts, &tid);
	bpf_map_delete_elem(&gc_stats_starts, &tid);
	/* The kernel frees the thread's stack later, with the task. */
	struct span_stack *st = current_stack(false);
	if (st)
		release_imports(st);
	if (tid == tgid) {
		/* Its PID can be reused by a process that is not traced. */
		if (tgid == command_tgid)
			command_tgid = 0;
		bpf_map_delete_elem(&seen_tgids, &tgid);
		__sync_fetch_and_add(&processes_forgotten, 1);
		bpf_map_delete_elem(&func_hits, &tgid);
		if (filter_tgid)
			bpf_map_delete_elem(&traced, &tgid);
		bpf_map_delete_elem(&gated, &tgid);
	}
	return 0;
}

#endif /* PYUSDT_TASKS_H */
