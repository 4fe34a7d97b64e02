// SPDX-License-Identifier: Apache-2.0
/* Function probes (--probes function): entries pushed on the thread's stack, returns sent as
 * spans, the names of a code location sent once per process image.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_FUNCTIONS_H
#define PYUSDT_FUNCTIONS_H

/* Marker hits per process under function probes, counted only where user space asks (an
 * interpreter of an unverified version: do entries fire at all?). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tgid */
	__type(value, struct func_hits);
} func_hits SEC(".maps");

/* Code locations whose names a function record carried, per process image. An evicted entry
 * only means the names are sent again. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct code_ref);
	__type(value, __u8);
} code_sent SEC(".maps");

/* A code object's function and file names, bounded copies of the marker's arguments; false
 * when either could not be read (then it is empty). */
static __always_inline bool read_code_names(char name_dst[FUNC_NAME_LEN],
					    char file_dst[FUNC_FILE_LEN], const char *name,
					    const char *file)
{
	bool ok = true;
	if (bpf_probe_read_user_str(name_dst, FUNC_NAME_LEN, name) <= 1) {
		name_dst[0] = '\0';
		ok = false;
	}
	if (bpf_probe_read_user_str(file_dst, FUNC_FILE_LEN, file) <= 1) {
		file_dst[0] = '\0';
		ok = false;
	}
	return ok;
}

enum hit { HIT_ENTRY, HIT_RETURN };

/* Counts a marker hit of the process (entries and returns: do entries fire?). */
static __always_inline void hit(__u32 tgid, enum hit kind)
{
	struct func_hits *h = LOOKUP_OR_ZERO(&func_hits, &tgid, struct func_hits);
	if (!h)
		return;
	if (kind == HIT_ENTRY)
		__sync_fetch_and_add(&h->entries, 1);
	else
		__sync_fetch_and_add(&h->returns, 1);
}

/* Function spans (--probes function), attached per process (no `wanted` check needed):
 * entries push, returns pop and report calls of at least min_function_ns, so that short calls
 * cost no ring-buffer traffic. Arguments are read only when used: every call pays for these
 * programs. The cookie: the attachment's epoch (low 32 bits) and FUNC_COUNT_HITS. */
SEC("usdt")
int function_entry(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct __bpf_usdt_spec *spec = usdt_spec(ctx);
	__u64 cookie = usdt_spec_cookie(spec);
	if (cookie & FUNC_COUNT_HITS)
		hit(id >> 32, HIT_ENTRY);
	stack_push((__s32)usdt_arg(ctx, spec, 2), (__u64)usdt_arg(ctx, spec, 1), (__u32)cookie);
	return 0;
}

/* 3.11 with --line-mode: attached to the line marker only for its semaphore, which makes the
 * interpreter take its tracing path, where function__entry fires for every call. */
SEC("usdt")
int function_line(struct pt_regs *ctx)
{
	return 0;
}

SEC("usdt")
int function_return(struct pt_regs *ctx)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	struct __bpf_usdt_spec *spec = usdt_spec(ctx);
	__u64 cookie = usdt_spec_cookie(spec);
	if (cookie & FUNC_COUNT_HITS)
		hit(id >> 32, HIT_RETURN);
	long file = usdt_arg(ctx, spec, 0), name = usdt_arg(ctx, spec, 1);
	/* 3.15's __init__ shim (the frame CALL_ALLOC_AND_ENTER_INIT pushes) returns at line -1
	 * without an entry: it ends no call. */
	if ((__s32)usdt_arg(ctx, spec, 2) < 0)
		return 0;
	__u64 start;
	__s32 first_line;
	__u32 depth = call_pop((__u64)name, &start, &first_line, (__u32)cookie);
	if (!start || now - start < min_function_ns)
		return 0;
	struct code_ref code = {
		.mm = (__u64)bpf_get_current_task_btf()->mm,
		.name_ptr = (__u64)name,
		.file_ptr = (__u64)file,
		.line = first_line,
		.tgid = id >> 32,
	};
	/* Names already sent: a 64-byte record instead of a 256-byte one and no string copies. */
	if (bpf_map_lookup_elem(&code_sent, &code)) {
		/* --metrics-only: into the code location's histogram, no record; when the table
		 * is full, the call goes as a record (below), as without --metrics-only. */
		if (metrics_only && aggregate(&func_agg, &code, start, now, 0))
			return 0;
		struct function_ref_event *r = bpf_ringbuf_reserve(&events, sizeof(*r), 0);
		if (!r) {
			count(STAT_DROP_FUNCTION);
			return 0;
		}
		fill_header(&r->h, id, MARKER_FUNCTION_REF, start, now, depth);
		r->code = code;
		submit(r, sizeof(*r));
		return 0;
	}
	/* Not for the calls above: their location's names went out in a record of this process
	 * (the key holds its tgid), after it was noted. */
	note_process(id, now);
	struct function_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_FUNCTION);
		return 0;
	}
	fill_header(&e->h, id, MARKER_FUNCTION, start, now, depth);
	e->code = code;
	/* Marked sent only once this record is reserved (it will be delivered), and before it is
	 * submitted: a later reference from another thread is reserved after it in the ring.
	 * Names that could not be read (a page out, say) are read again at the next call. */
	if (read_code_names(e->name, e->file, (const char *)name, (const char *)file)) {
		__u8 one = 1;
		bpf_map_update_elem(&code_sent, &code, &one, BPF_ANY);
	}
	submit(e, sizeof(*e));
	return 0;
}

#endif /* PYUSDT_FUNCTIONS_H */
