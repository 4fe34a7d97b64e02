// SPDX-License-Identifier: Apache-2.0
/* Hook points of CPythons built without markers (issue 24): src/discover/hooks.rs finds them
 * and attaches these programs at a function's first instruction and at its returns, with a
 * cookie: bits 0-7 the size of the version's PyASCIIObject (where a compact ASCII str's
 * characters start), bits 8-15 the enum signal_source the events carry.
 *
 * Imports: import.c (3.11+) loads a module by calling
 *   PyObject_CallMethodObjArgs(importlib, &_Py_ID(_find_and_load), abs_name, import_func, NULL)
 * exactly between the two import markers of builds that have them. The entry program keeps the
 * calls whose method name is the str "_find_and_load" and starts an import, with the stack
 * pointer at the entry; the return program ends it at the return whose stack pointer is the
 * one just above (the return address popped), found when the call returned a module, as the
 * done marker's `mod != NULL`. Other calls' returns see another stack pointer.
 *
 * GC (3.11, 3.12): gc_collect_main(tstate, generation, ...) does every collection, the
 * markers' start and done inside it; its entry starts one with the generation of its second
 * argument, its return ends it with the return value, n + m, the done marker's argument. The
 * function does not recurse (the `collecting` flag is checked before it is called).
 *
 * GC (3.13): gc_collect_main(tstate, generation, reason) is given -1 for "the one due" and
 * picks it inside, or returns 0 at once when none is due or a collection is running. What it
 * did is read from the interpreter's GC statistics (generation_stats: per generation
 * collections, collected, uncollectable), reached from tstate by two offsets in the cookie
 * (bits 16-31: tstate->interp, bits 32-63: the statistics in the interpreter state, from
 * _PyRuntime's debug offsets): the entry keeps the three collection counts, the return finds
 * the generation whose count went up by one (none: no collection, no event) and ends the
 * collection with the return value, n + m, as the done marker. It is entered again from
 * inside a collection (gc.collect() in a gc.callbacks function or a finalizer) and returns
 * at once then: such a call is counted in `nested` and its return skipped, so that the
 * outer collection is the one reported.
 *
 * Audit: sys_audit_tstate(tstate, event, format, va) is where every event raised from C goes
 * (PySys_Audit and _PySys_Audit call it); the marker fires inside it once the arguments are
 * built. The entry program sends the event's name as the marker's program does, without the
 * arguments (a format and a va_list, not the tuple) and so with no argument count.
 * Included by pyusdt.bpf.c only, after audit.h (one object, one skeleton). */
#ifndef PYUSDT_HOOKS_H
#define PYUSDT_HOOKS_H

#define HOOK_DATA_OFFSET(cookie) ((cookie) & 0xff)
#define HOOK_SOURCE(cookie) (((cookie) >> 8) & 0xff)

/* "_find_and_load" and its NUL, as two little-endian words (the second's 8th byte is not the
 * string's). */
#define FIND_AND_LOAD_LEN 14
#define FIND_AND_LOAD_0 0x6e615f646e69665fULL /* "_find_an" */
#define FIND_AND_LOAD_1 0x0064616f6c5f64ULL   /* "d_load\0" */
#define LOW_7_BYTES 0x00ffffffffffffffULL

/* A str's length, hash and state: 16 bytes into the object, after ob_refcnt and ob_type (64-bit
 * builds with the GIL; the free-threaded ones are refused in user space). */
struct str_head {
	__s64 length;
	__u64 hash;
	__u32 state;
	__u32 _pad;
};

SEC("uprobe")
int hook_import_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 name = PT_REGS_PARM2(ctx);
	struct str_head head;
	if (bpf_probe_read_user(&head, sizeof(head), (void *)(name + 16)) < 0)
		return 0;
	if (head.length != FIND_AND_LOAD_LEN ||
	    (head.state & (PYUNICODE_COMPACT | PYUNICODE_ASCII)) !=
		    (PYUNICODE_COMPACT | PYUNICODE_ASCII))
		return 0;
	__u64 text[2];
	if (bpf_probe_read_user(text, sizeof(text), (void *)(name + HOOK_DATA_OFFSET(cookie))) < 0)
		return 0;
	if (text[0] != FIND_AND_LOAD_0 || (text[1] & LOW_7_BYTES) != FIND_AND_LOAD_1)
		return 0;
	/* Beyond the import stack, the return could not be told from others: not started. */
	struct span_stack *st = current_stack(false);
	if (st && st->imports >= IMPORT_STACK_DEPTH) {
		count(STAT_IMPORT_TOO_DEEP);
		return 0;
	}
	import_begin(PT_REGS_SP(ctx), PT_REGS_PARM3(ctx));
	return 0;
}

/* Ends an import whose return was not seen (the kernel installs at most 64 pending return
 * probes per thread): counted as a start without its done. */
static __always_inline void import_drop(struct span_stack *st)
{
	__u64 start;
	__s32 line;
	stack_pop(&start, &line, EPOCH_ANY);
	st->imports -= 1;
	__sync_fetch_and_add(&imports_in_progress, -1);
	count(STAT_UNPAIRED_START);
}

/* Imports in progress below a return that were not ended: dropped, at most this many. */
#define STALE_IMPORTS 4

SEC("uretprobe")
int hook_import_return(struct pt_regs *ctx)
{
	/* Most returns are other calls': with no import in progress anywhere, nothing to do. */
	if (!imports_in_progress)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	struct span_stack *st = current_stack(false);
	if (!st)
		return 0;
	__u64 sp = PT_REGS_SP(ctx);
	for (int i = 0; i <= STALE_IMPORTS; i++) {
		__u32 n = st->imports;
		if (n == 0 || n > IMPORT_STACK_DEPTH)
			return 0;
		__u64 entry_sp = st->import_sp[n - 1];
		/* An import of the markers, or a call deeper than the innermost import. */
		if (entry_sp == 0 || entry_sp + 8 > sp)
			return 0;
		if (entry_sp + 8 == sp) {
			__u64 cookie = bpf_get_attach_cookie(ctx);
			import_end(id, now, PT_REGS_RC(ctx) != 0, HOOK_SOURCE(cookie), 0,
				   st->import_obj[n - 1], HOOK_DATA_OFFSET(cookie));
			return 0;
		}
		/* Started deeper than this frame: it returned unseen. */
		import_drop(st);
	}
	return 0;
}

SEC("uprobe")
int hook_gc_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	gc_begin(id, (int)PT_REGS_PARM2(ctx));
	return 0;
}

SEC("uretprobe")
int hook_gc_return(struct pt_regs *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	gc_end(id, now, (long)PT_REGS_RC(ctx), HOOK_SOURCE(bpf_get_attach_cookie(ctx)), -1);
	return 0;
}

#define GC_STATS_TSTATE_INTERP(cookie) (((cookie) >> 16) & 0xffff)
#define GC_STATS_IN_INTERP(cookie) ((cookie) >> 32)

struct gc_generation_stats {
	__s64 collections;
	__s64 collected;
	__s64 uncollectable;
};

/* Where a thread's collection's statistics are, their collection counts at its start, and
 * the calls entered inside it whose returns are still to come. */
struct gc_stats_start {
	__u64 stats;
	__s64 collections[3];
	__u64 nested;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* tid */
	__type(value, struct gc_stats_start);
} gc_stats_starts SEC(".maps");

/* The statistics of the interpreter of the thread state `tstate`; 0 when unreadable. */
static __always_inline __u64 gc_stats_of(__u64 tstate, __u64 cookie)
{
	__u64 interp = 0;
	if (!tstate || bpf_probe_read_user(&interp, sizeof(interp),
					    (void *)(tstate + GC_STATS_TSTATE_INTERP(cookie))) < 0 ||
	    !interp)
		return 0;
	return interp + GC_STATS_IN_INTERP(cookie);
}

SEC("uprobe")
int hook_gc_stats_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct gc_stats_start *outer = bpf_map_lookup_elem(&gc_stats_starts, &tid);
	if (outer) {
		/* Inside a collection of this thread: it returns at once (`collecting`). */
		outer->nested += 1;
		return 0;
	}
	struct gc_stats_start s = {};
	s.stats = gc_stats_of(PT_REGS_PARM1(ctx), bpf_get_attach_cookie(ctx));
	struct gc_generation_stats now[3];
	if (!s.stats || bpf_probe_read_user(now, sizeof(now), (void *)s.stats) < 0)
		return 0;
	for (int i = 0; i < 3; i++)
		s.collections[i] = now[i].collections;
	bpf_map_update_elem(&gc_stats_starts, &tid, &s, BPF_ANY);
	gc_begin(id, -1);
	return 0;
}

SEC("uretprobe")
int hook_gc_stats_return(struct pt_regs *ctx)
{
	__u64 now_ns = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct gc_stats_start *s = bpf_map_lookup_elem(&gc_stats_starts, &tid);
	if (!s)
		return 0;
	if (s->nested > 0) {
		s->nested -= 1;
		return 0;
	}
	struct gc_stats_start before = *s;
	bpf_map_delete_elem(&gc_stats_starts, &tid);
	struct gc_generation_stats now[3];
	int generation = -1;
	if (bpf_probe_read_user(now, sizeof(now), (void *)before.stats) == 0) {
		for (int i = 0; i < 3; i++)
			if (now[i].collections == before.collections[i] + 1)
				generation = i;
	}
	if (generation < 0) {
		/* Nothing collected (none due, or one running): not a collection. */
		bpf_map_delete_elem(&gc_starts, &tid);
		return 0;
	}
	gc_end(id, now_ns, (long)PT_REGS_RC(ctx), HOOK_SOURCE(bpf_get_attach_cookie(ctx)),
	       generation);
	return 0;
}

SEC("uprobe")
int hook_audit_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	/* Without a thread state the function returns at once: no event. */
	if (!PT_REGS_PARM1(ctx))
		return 0;
	const char *event = (const char *)PT_REGS_PARM2(ctx);
	if (metrics_only) {
		struct audit_count_key key = { .tgid = id >> 32 };
		if (bpf_probe_read_user_str(key.name, sizeof(key.name), event) < 0)
			key.name[0] = '\0';
		if (!count_in(&audit_counts, &key))
			count(STAT_DROP_AUDIT);
		if (!described_here(id))
			note_process(id, bpf_ktime_get_ns());
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	if (!described_here(id))
		note_process(id, now);
	__u32 depth = 0;
	if (function_probes || imports_in_progress) {
		struct span_stack *st = current_stack(false);
		depth = st ? st->depth : 0;
	}
	struct audit_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_AUDIT);
		return 0;
	}
	fill_header(&e->h, id, MARKER_AUDIT, now, now, depth);
	e->h.source = HOOK_SOURCE(bpf_get_attach_cookie(ctx));
	e->nargs = -1;
	if (bpf_probe_read_user_str(e->name, sizeof(e->name), event) < 0)
		e->name[0] = '\0';
	submit(e, sizeof(*e));
	return 0;
}

#endif /* PYUSDT_HOOKS_H */
