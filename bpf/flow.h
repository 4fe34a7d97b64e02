// SPDX-License-Identifier: Apache-2.0
/* `flow` (each call and line as a record) and `top` (calls counted in the kernel).
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

static __always_inline void count_call(const char *file, const char *name, int line,
				       bool line_in_key)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return;
	struct func_key key = { .pid = id >> 32,
				.line = line_in_key ? line : 0,
				.file = (__u64)file,
				.name = (__u64)name };
	struct func_count *c = bpf_map_lookup_elem(&func_counts, &key);
	if (c) {
		__sync_fetch_and_add(&c->calls, 1);
		if (!line_in_key)
			c->line = line; /* a returning line: keep the latest */
		return;
	}
	__u32 zero = 0;
	struct func_count *fresh = bpf_map_lookup_elem(&func_count_scratch, &zero);
	if (!fresh)
		return;
	fresh->calls = 1;
	fresh->line = line;
	fresh->_pad = 0;
	read_code_names(fresh->name, fresh->file, name, file);
	/* Another CPU may have created it meanwhile: then add to that one. */
	if (bpf_map_update_elem(&func_counts, &key, fresh, BPF_NOEXIST) != 0) {
		c = bpf_map_lookup_elem(&func_counts, &key);
		if (c)
			__sync_fetch_and_add(&c->calls, 1);
		else
			count(STAT_FUNC_TABLE_FULL);
	}
}

/* Attached to function__entry where it fires (3.8-3.10), else to function__return (3.11):
 * every call enters once and returns once. */
SEC("usdt")
int count_entry(struct pt_regs *ctx)
{
	FUNCTION_MARKER_ARGS(ctx);
	count_call(file, name, line, true);
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
