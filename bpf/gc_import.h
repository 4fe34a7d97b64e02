// SPDX-License-Identifier: Apache-2.0
/* The gc and import markers: starts paired with their done, per thread.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_GC_IMPORT_H
#define PYUSDT_GC_IMPORT_H

struct gc_start {
	__u64 ts;
	__s32 generation;
	__u32 _pad;
};

/* LRU: a thread killed mid-collection must not leak its entry forever. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32); /* tid */
	__type(value, struct gc_start);
} gc_starts SEC(".maps");

/* A collection starts on this thread (the start marker, or gc_collect_main's entry). */
static __always_inline void gc_begin(__u64 id, int generation)
{
	__u32 tid = (__u32)id;
	struct gc_start s = { .ts = bpf_ktime_get_ns(), .generation = generation };
	/* A start still pending means its done was never seen: replace it, count it. */
	if (bpf_map_lookup_elem(&gc_starts, &tid))
		count(STAT_UNPAIRED_START);
	bpf_map_update_elem(&gc_starts, &tid, &s, BPF_ANY);
}

/* It ends, with `collected` objects (n + m, as the done marker says): its event is sent, or
 * aggregated, as seen from `source` (enum signal_source). `known` is its generation when the
 * caller knows it (-1: the start's). */
static __always_inline void gc_end(__u64 id, __u64 now, long collected, __u8 source,
				   __s32 known)
{
	__u32 tid = (__u32)id;
	__u64 start = 0;
	__s32 generation = known;
	struct gc_start *s = bpf_map_lookup_elem(&gc_starts, &tid);
	if (s) {
		start = s->ts;
		if (known < 0)
			generation = s->generation;
		bpf_map_delete_elem(&gc_starts, &tid);
	}
	note_process(id, now);
	if (metrics_only) {
		struct duration_key key = { .tgid = id >> 32, .series = generation };
		if (!aggregate(&gc_agg, &key, start, now, collected))
			count(STAT_DROP_GC);
		return;
	}
	struct gc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_GC);
		return;
	}
	fill_header(&e->h, id, MARKER_GC, start, now, spans_in_progress());
	e->h.source = source;
	e->collected = collected;
	e->generation = generation;
	e->_pad = 0;
	submit(e, sizeof(*e));
}

SEC("usdt")
int BPF_USDT(gc_start, int generation)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	gc_begin(id, generation);
	return 0;
}

SEC("usdt")
int BPF_USDT(gc_done, long collected)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	gc_end(id, now, collected, SOURCE_MARKER, -1);
	return 0;
}

/* An import starts (the start marker, or the hooked call: `sp` and `obj` its stack pointer
 * and module name object, 0 for the marker); returns the thread's stack. */
static __always_inline struct span_stack *import_begin(__u64 sp, __u64 obj)
{
	struct span_stack *st = stack_push(0, 0, EPOCH_ANY);
	if (!st)
		return 0;
	__u32 i = st->imports;
	if (i < IMPORT_STACK_DEPTH) {
		st->import_ts[i] = bpf_ktime_get_ns();
		st->import_sp[i] = sp;
		st->import_obj[i] = obj;
	} else {
		count(STAT_IMPORT_TOO_DEEP);
	}
	st->imports = i + 1;
	__sync_fetch_and_add(&imports_in_progress, 1);
	return st;
}

SEC("usdt")
int BPF_USDT(import_start, const char *module)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	import_begin(0, 0);
	return 0;
}

/* The module name of a hooked import, from its str object: the characters of a compact
 * ASCII string follow its header (`data_offset`: sizeof(PyASCIIObject) of the version); a
 * compact non-ASCII one keeps a UTF-8 copy's pointer 8 bytes further, when it was made.
 * Otherwise the name is left empty (the decoder says it is unknown). */
#define PYUNICODE_STATE_OFFSET 32
#define PYUNICODE_COMPACT 0x20
#define PYUNICODE_ASCII 0x40
static __always_inline void read_module_obj(char *dst, __u64 obj, __u64 data_offset)
{
	__u32 state = 0;
	dst[0] = '\0';
	if (bpf_probe_read_user(&state, sizeof(state), (void *)(obj + PYUNICODE_STATE_OFFSET)) < 0 ||
	    !(state & PYUNICODE_COMPACT))
		return;
	if (state & PYUNICODE_ASCII) {
		if (bpf_probe_read_user_str(dst, MODULE_LEN, (void *)(obj + data_offset)) < 0)
			dst[0] = '\0';
		return;
	}
	__u64 utf8 = 0;
	if (bpf_probe_read_user(&utf8, sizeof(utf8), (void *)(obj + data_offset + 8)) < 0 || !utf8)
		return;
	if (bpf_probe_read_user_str(dst, MODULE_LEN, (void *)utf8) < 0)
		dst[0] = '\0';
}

/* An import ends: pops it and sends its event (or aggregates it), the module name read from
 * `module_utf8` (the marker's argument) or, from a hook, from the str object `module_obj`. */
static __always_inline void import_end(__u64 id, __u64 now, int found, __u8 source,
				       const char *module_utf8, __u64 module_obj,
				       __u64 data_offset)
{
	__u64 unused_start, start = 0;
	__s32 line;
	__u32 depth = stack_pop(&unused_start, &line, EPOCH_ANY);
	__u32 nesting = 0;
	struct span_stack *st = current_stack(false);
	if (st && st->imports > 0) {
		nesting = st->imports - 1;
		if (nesting < IMPORT_STACK_DEPTH)
			start = st->import_ts[nesting];
		st->imports = nesting;
		__sync_fetch_and_add(&imports_in_progress, -1);
	}
	note_process(id, now);
	if (metrics_only) {
		struct duration_key key = {
			.tgid = id >> 32,
			.series = (found ? 1 : 0) | (nesting == 0 ? 2 : 0),
		};
		if (!aggregate(&import_agg, &key, start, now, 0))
			count(STAT_DROP_IMPORT);
		return;
	}
	struct import_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_IMPORT);
		return;
	}
	/* After the pop: depth counts the enclosing spans. */
	fill_header(&e->h, id, MARKER_IMPORT, start, now, depth);
	e->h.source = source;
	e->found = found;
	e->nesting = nesting;
	if (module_obj) {
		read_module_obj(e->module, module_obj, data_offset);
	} else if (bpf_probe_read_user_str(e->module, sizeof(e->module), module_utf8) < 0) {
		e->module[0] = '\0';
	}
	submit(e, sizeof(*e));
}

SEC("usdt")
int BPF_USDT(import_done, const char *module, int found)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	import_end(id, now, found, SOURCE_MARKER, module, 0, 0);
	return 0;
}

#endif /* PYUSDT_GC_IMPORT_H */
