// SPDX-License-Identifier: Apache-2.0
/* `flow` (each call and line as a record) and `top` (calls counted and timed in the kernel).
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_FLOW_H
#define PYUSDT_FLOW_H

/* Calls counted in the kernel: nothing per call crosses to user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct func_key);
	__type(value, struct func_count);
} func_counts SEC(".maps");

/* Scratch for a new entry (too large for the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct func_count);
} func_count_scratch SEC(".maps");

struct func_key _func_key = {};
struct func_count _func_count = {};
struct flow_event _flow_event = {};
struct function_event _function_event = {};
struct function_ref_event _function_ref_event = {};
enum flow_kind _flow_kind = FLOW_ENTRY;

/* The function (and line) markers' arguments: file name, function name, line number. */
#define FUNCTION_MARKER_ARGS(ctx)                                                                  \
	struct __bpf_usdt_spec *spec = usdt_spec(ctx);                                             \
	const char *file = (const char *)usdt_arg(ctx, spec, 0);                                   \
	const char *name = (const char *)usdt_arg(ctx, spec, 1);                                   \
	int line = (int)usdt_arg(ctx, spec, 2)

/* `pyusdt flow`: one record per entry, return (and line) of the traced process. */
static __always_inline void flow(__u8 kind, const char *file, const char *name, int line)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct flow_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_FLOW);
		return;
	}
	__u64 now = bpf_ktime_get_ns();
	fill_header(&e->h, id, MARKER_FLOW, now, now, 0);
	e->kind = kind;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));
	e->line = line;
	read_code_names(e->name, e->file, name, file);
	submit(e, sizeof(*e));
}

SEC("usdt")
int flow_entry(struct pt_regs *ctx)
{
	FUNCTION_MARKER_ARGS(ctx);
	flow(FLOW_ENTRY, file, name, line);
	return 0;
}

SEC("usdt")
int flow_return(struct pt_regs *ctx)
{
	FUNCTION_MARKER_ARGS(ctx);
	flow(FLOW_RETURN, file, name, line);
	return 0;
}

/* Attached on 3.11 even without --lines: its semaphore switches the interpreter to the tracing
 * path, the only one where function__entry fires for every call. */
SEC("usdt")
int flow_line(struct pt_regs *ctx)
{
	if (flow_lines) {
		FUNCTION_MARKER_ARGS(ctx);
		flow(FLOW_LINE, file, name, line);
	}
	return 0;
}

/* Counts a call of the process, if it is wanted; returns whether it was. */
static __always_inline bool count_call(const char *file, const char *name, int line,
				       bool line_in_key)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return false;
	struct func_key key = { .pid = id >> 32,
				.line = line_in_key ? line : 0,
				.file = (__u64)file,
				.name = (__u64)name };
	struct func_count *c = bpf_map_lookup_elem(&func_counts, &key);
	if (c) {
		__sync_fetch_and_add(&c->calls, 1);
		if (!line_in_key)
			c->line = line; /* a returning line: keep the latest */
		return true;
	}
	__u32 zero = 0;
	struct func_count *fresh = bpf_map_lookup_elem(&func_count_scratch, &zero);
	if (!fresh)
		return true;
	fresh->calls = 1;
	fresh->timed = 0;
	fresh->total_ns = 0;
	fresh->own_ns = 0;
	fresh->line = line;
	fresh->at_entry = line_in_key;
	read_code_names(fresh->name, fresh->file, name, file);
	/* Another CPU may have created it meanwhile: then add to that one. */
	if (bpf_map_update_elem(&func_counts, &key, fresh, BPF_NOEXIST) != 0) {
		c = bpf_map_lookup_elem(&func_counts, &key);
		if (c)
			__sync_fetch_and_add(&c->calls, 1);
		else
			count(STAT_FUNC_TABLE_FULL);
	}
	return true;
}

/* Timed `top`: the calls in progress on a thread, innermost last. Time spent in the calls a
 * frame made is added to its child_ns, so that its own time is its duration less that. A
 * generator (3.8-3.10, 3.15) enters at each resumption and returns at each yield: its time
 * between yields is counted, the time it sits suspended is not. */
struct time_frame {
	__u64 ts;
	__u64 child_ns;
	/* Durations of calls of the same function above it: not in the total if this frame
	 * returns (they are within its own duration), added to the total if it turns out to be a
	 * 3.15 creation, which never returns (flush_created). */
	__u64 pending_ns;
	__u64 file;
	__u64 name;
	__s32 line;
	__u32 _pad;
};

struct time_stack {
	__u32 depth; /* may exceed TIME_STACK_DEPTH: the frames beyond are counted, not timed */
	__u32 epoch; /* of the attachment that pushed the frames (see stack.h) */
	struct time_frame f[SPAN_STACK_DEPTH];
};

/* Task-local, as span_stacks: freed with the thread, dropped at exec (tasks.h). */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct time_stack);
} time_stacks SEC(".maps");

/* The thread's time stack, emptied when it was filled under another attachment (a sampling
 * gap of the budget: a return then is not paired with an entry from before the gap). */
static __always_inline struct time_stack *time_stack(bool create, __u32 epoch)
{
	struct time_stack *st = bpf_task_storage_get(&time_stacks, bpf_get_current_task_btf(), 0,
						    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
	if (st && st->epoch != epoch) {
		st->depth = 0;
		st->epoch = epoch;
	}
	return st;
}

static __always_inline void time_push(__u64 cookie, const char *file, const char *name, int line)
{
	struct time_stack *st = time_stack(true, (__u32)cookie);
	if (!st)
		return;
	__u32 d = st->depth;
	if (d < SPAN_STACK_DEPTH) {
		st->f[d].ts = bpf_ktime_get_ns();
		st->f[d].child_ns = 0;
		st->f[d].pending_ns = 0;
		st->f[d].file = (__u64)file;
		st->f[d].name = (__u64)name;
		st->f[d].line = line;
	} else if (d < 0x7fffffff) {
		count(STAT_CALLS_TOO_DEEP);
	}
	st->depth = d + 1;
}

/* Attached to function__entry where it fires (3.8-3.10, 3.15), else to function__return
 * (3.11): every call enters once and returns once. Timed `top` also pushes the call. */
SEC("usdt")
int count_entry(struct pt_regs *ctx)
{
	FUNCTION_MARKER_ARGS(ctx);
	if (count_call(file, name, line, true) && time_calls)
		time_push(usdt_spec_cookie(spec), file, name, line);
	return 0;
}

/* The nearest frame below `d` of the function (file, name; and first line when `line` is not
 * ANY_LINE), or `d` when there is none. */
#define ANY_LINE ((__s64)1 << 32)
static __always_inline __u32 nearest_below(struct time_stack *st, __u32 d, __u64 file,
					   __u64 name, __s64 line)
{
	for (__u32 i = 1; i < SPAN_STACK_DEPTH; i++) {
		if (i > d)
			break;
		__u32 k = d - i;
		if (k >= SPAN_STACK_DEPTH)
			break;
		if (st->f[k].name == name && st->f[k].file == file &&
		    (line == ANY_LINE || st->f[k].line == line))
			return k;
	}
	return d;
}

/* A frame dropped as a 3.15 creation: the calls of its function it held pending were the
 * outermost after all, and their time goes to the total. */
static __always_inline void flush_created(struct time_frame *fr, __u32 tgid)
{
	if (!fr->pending_ns)
		return;
	struct func_key key = { .pid = tgid, .line = fr->line, .file = fr->file, .name = fr->name };
	struct func_count *c = bpf_map_lookup_elem(&func_counts, &key);
	if (c)
		__sync_fetch_and_add(&c->total_ns, fr->pending_ns);
}

/* Timed `top`, at function__return: pops the call and adds its time to its count's entry.
 * On 3.15 a generator's or coroutine's creation enters without returning (docs/compatibility.md):
 * a return that is not the innermost entry's ends the nearest entry of its function below, and
 * the creations above it are dropped, the time of the calls made while they were on top
 * (added to their child_ns) going to the call that made them. On 3.8-3.10 entries and returns
 * pair exactly, and the innermost entry is the one. */
SEC("usdt")
int time_return(struct pt_regs *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	FUNCTION_MARKER_ARGS(ctx);
	struct time_stack *st = time_stack(false, (__u32)usdt_spec_cookie(spec));
	if (!st || st->depth == 0)
		return 0;
	__u32 d = st->depth - 1;
	if (d >= SPAN_STACK_DEPTH) {
		st->depth = d; /* a frame beyond the stack: counted at its entry, not timed */
		return 0;
	}
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (st->f[d].name != (__u64)name || st->f[d].file != (__u64)file) {
		/* The return's line is not the entry's: any line of the function. */
		__u32 found = nearest_below(st, d, (__u64)file, (__u64)name, ANY_LINE);
		if (found == d) {
			/* Not a call seen entering (attached after it began): nothing to time. */
			st->depth = d;
			return 0;
		}
		/* The frames above `found` are creations: dropped, their pending totals flushed,
		 * and the time of the calls made while they were on top given to `found`. */
		__u64 created_child_ns = 0;
		for (__u32 i = 1; i < SPAN_STACK_DEPTH; i++) {
			__u32 k = found + i;
			if (k > d)
				break;
			barrier_var(k); /* the verifier needs the check the compiler would drop */
			if (k >= SPAN_STACK_DEPTH)
				break;
			created_child_ns += st->f[k].child_ns;
			flush_created(&st->f[k], tgid);
		}
		d = found;
		barrier_var(d);
		if (d < SPAN_STACK_DEPTH)
			st->f[d].child_ns += created_child_ns;
	}
	barrier_var(d);
	if (d >= SPAN_STACK_DEPTH)
		return 0;
	struct time_frame *fr = &st->f[d];
	__u64 dur = now > fr->ts ? now - fr->ts : 0;
	__u64 own = dur > fr->child_ns ? dur - fr->child_ns : 0;
	struct func_key key = { .pid = tgid, .line = fr->line, .file = fr->file, .name = fr->name };
	/* A recursive call's time is in the nearest outer call of its function: held pending
	 * there, and dropped when that call returns (its duration covers it). */
	__u32 outer = nearest_below(st, d, key.file, key.name, fr->line);
	bool outermost = outer == d;
	if (!outermost) {
		barrier_var(outer);
		if (outer < SPAN_STACK_DEPTH)
			st->f[outer].pending_ns += dur;
	}
	if (d > 0) {
		__u32 parent = d - 1;
		barrier_var(parent); /* the verifier needs the check the compiler would drop */
		if (parent < SPAN_STACK_DEPTH)
			st->f[parent].child_ns += dur;
	}
	st->depth = d;
	struct func_count *c = bpf_map_lookup_elem(&func_counts, &key);
	if (!c)
		return 0; /* not counted (table full: counted as such at its entry) */
	__sync_fetch_and_add(&c->timed, 1);
	__sync_fetch_and_add(&c->own_ns, own);
	if (outermost)
		__sync_fetch_and_add(&c->total_ns, dur);
	return 0;
}

SEC("usdt")
int count_return(struct pt_regs *ctx)
{
	FUNCTION_MARKER_ARGS(ctx);
	count_call(file, name, line, false);
	return 0;
}

#endif /* PYUSDT_FLOW_H */
