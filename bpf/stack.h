// SPDX-License-Identifier: Apache-2.0
/* The per-thread stack of what is in progress (imports and traced calls), in task-local
 * storage, with the sampling epochs of the function probes.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_STACK_H
#define PYUSDT_STACK_H

/* Imports in progress over all threads (pushed on a thread's stack and not yet popped). While
 * there are none and function probes are not loaded, no thread has a span in progress, and an
 * audit event needs no look at its thread's stack (two helper calls). A stack emptied or
 * dropped with imports in it (a sampling gap, exec, the thread's exit) gives them back
 * (release_imports); were one missed, the count would only stay too high, which costs the
 * shortcut, never a wrong depth. */
__u64 imports_in_progress = 0;

/* Per thread: what is in progress (imports, and traced calls), innermost last. */
struct span_stack {
	__u32 depth;
	__u32 imports;
	__u32 epoch; /* the process's function epoch when this stack was last valid */
	__u32 _pad;
	__u64 ts[SPAN_STACK_DEPTH];
	__s32 line[SPAN_STACK_DEPTH];
	__u64 name[SPAN_STACK_DEPTH]; /* a call's co_name pointer (see call_pop); 0: an import */
	__u64 import_ts[IMPORT_STACK_DEPTH];
	/* Imports seen through a hook point (hooks.h): the stack pointer at the hooked call's
	 * entry, which tells its return from other calls' returns, and the module name object. */
	__u64 import_sp[IMPORT_STACK_DEPTH];
	__u64 import_obj[IMPORT_STACK_DEPTH];
};

/* Task-local storage: every function event looks its thread's stack up, and a hash keyed by
 * tid cost about 100 ns more per lookup here than this (a pointer held by the task itself).
 * Created zeroed at the thread's first push or audit event; freed by the kernel with the
 * thread, and dropped at exec. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct span_stack);
} span_stacks SEC(".maps");

/* The current thread's span stack, created (zeroed) when `create`. */
static __always_inline struct span_stack *current_stack(bool create)
{
	return bpf_task_storage_get(&span_stacks, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

/* Function probes are attached per process, and detached and attached again in sampling
 * windows (the overhead budget). While detached, the thread's real stack moves on unseen. Each
 * attachment carries a new epoch in its cookie, and a function event meeting a stack of
 * another epoch empties it first, so that no return is paired with an entry from before the
 * gap. Calls and imports that span the gap are reported without a duration (counted). Import
 * and GC events do not know the epoch: they see the stack as it is (EPOCH_ANY). */
#define EPOCH_ANY 0xffffffffffffffffULL

/* Takes a stack's imports out of imports_in_progress and empties its import stack: the stack
 * is emptied or dropped. */
static __always_inline void release_imports(struct span_stack *st)
{
	if (st->imports)
		__sync_fetch_and_add(&imports_in_progress, -(__s64)st->imports);
	st->imports = 0;
}

/* The thread's stack; emptied first when `epoch` is given and differs from the stack's. */
static __always_inline struct span_stack *thread_stack(bool create, __u64 epoch)
{
	struct span_stack *st = current_stack(create);
	if (!st || epoch == EPOCH_ANY || st->epoch == (__u32)epoch)
		return st;
	/* Epoch 0: made by an import before any function event; it holds only imports (every
	 * function event sets an epoch of at least 1), so nothing is stale. */
	if (st->epoch == 0) {
		st->epoch = (__u32)epoch;
		return st;
	}
	if (st->depth)
		count(STAT_STACK_RESET);
	release_imports(st);
	st->depth = 0;
	st->epoch = (__u32)epoch;
	return st;
}

static __always_inline __u32 spans_in_progress(void)
{
	struct span_stack *st = current_stack(false);
	return st ? st->depth : 0;
}

/* Pushes an import start or a call entry; returns the thread's stack. */
static __always_inline struct span_stack *stack_push(__s32 line, __u64 name, __u64 epoch)
{
	struct span_stack *st = thread_stack(true, epoch);
	if (!st)
		return 0;
	__u32 d = st->depth;
	if (d < SPAN_STACK_DEPTH) {
		st->ts[d] = bpf_ktime_get_ns();
		st->line[d] = line;
		st->name[d] = name;
	} else {
		count(STAT_CALLS_TOO_DEEP);
	}
	st->depth = d + 1;
	return st;
}

/* Pops what an import done or a call return ends; returns the depth left (the enclosing
 * spans) and sets `start` (0 when unknown) and `line`. */
static __always_inline __u32 stack_pop(__u64 *start, __s32 *line, __u64 epoch)
{
	*start = 0;
	*line = 0;
	struct span_stack *st = thread_stack(false, epoch);
	if (!st || st->depth == 0)
		return 0;
	__u32 d = st->depth - 1;
	if (d < SPAN_STACK_DEPTH) {
		*start = st->ts[d];
		*line = st->line[d];
	}
	st->depth = d;
	return d;
}

/* CPython 3.15 fires function__entry also when a generator or coroutine is created (its frame
 * starts, then RETURN_GENERATOR leaves it without function__return), so such an entry stays
 * above its creator's (measured: docs/compatibility.md). A return whose name pointer (co_name's
 * UTF-8, one per name) is not the innermost entry's, but is one of the CREATED_LOOKAHEAD entries
 * below it, ends that one: the entries above it were creations and are dropped. An import (name
 * 0) is never dropped. On 3.8-3.11 entries and returns pair exactly: the innermost matches. */
#define CREATED_LOOKAHEAD 4
static __always_inline __u32 call_pop(__u64 name, __u64 *start, __s32 *line, __u64 epoch)
{
	struct span_stack *st = thread_stack(false, epoch);
	*start = 0;
	*line = 0;
	if (!st || st->depth == 0)
		return 0;
	__u32 d = st->depth - 1;
	if (d < SPAN_STACK_DEPTH && st->name[d] != name && st->name[d] != 0) {
		for (__u32 i = 1; i <= CREATED_LOOKAHEAD; i++) {
			if (i > d)
				break;
			__u32 k = d - i;
			if (k >= SPAN_STACK_DEPTH || st->name[k] == 0)
				break;
			if (st->name[k] == name) {
				d = k;
				break;
			}
		}
	}
	/* The compiler would drop this check on the path where d came from k: the verifier
	 * needs it on every path. */
	barrier_var(d);
	if (d < SPAN_STACK_DEPTH) {
		*start = st->ts[d];
		*line = st->line[d];
	}
	st->depth = d;
	return d;
}

#endif /* PYUSDT_STACK_H */
