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

SEC("usdt")
int BPF_USDT(gc_start, int generation)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	struct gc_start s = { .ts = bpf_ktime_get_ns(), .generation = generation };
	/* A start still pending means its done was never seen: replace it, count it. */
	if (bpf_map_lookup_elem(&gc_starts, &tid))
		count(STAT_UNPAIRED_START);
	bpf_map_update_elem(&gc_starts, &tid, &s, BPF_ANY);
	return 0;
}

SEC("usdt")
int BPF_USDT(gc_done, long collected)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	__u32 tid = (__u32)id;
	__u64 start = 0;
	__s32 generation = -1;
	struct gc_start *s = bpf_map_lookup_elem(&gc_starts, &tid);
	if (s) {
		start = s->ts;
		generation = s->generation;
		bpf_map_delete_elem(&gc_starts, &tid);
	}
	note_process(id, now);
	if (metrics_only) {
		struct duration_key key = { .tgid = id >> 32, .series = generation };
		if (!aggregate(&gc_agg, &key, start, now, collected))
			count(STAT_DROP_GC);
		return 0;
	}
	struct gc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_GC);
		return 0;
	}
	fill_header(&e->h, id, MARKER_GC, start, now, spans_in_progress());
	e->collected = collected;
	e->generation = generation;
	e->_pad = 0;
	submit(e, sizeof(*e));
	return 0;
}

SEC("usdt")
int BPF_USDT(import_start, const char *module)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	struct span_stack *st = stack_push(0, 0, EPOCH_ANY);
	if (!st)
		return 0;
	__u32 i = st->imports;
	if (i < IMPORT_STACK_DEPTH)
		st->import_ts[i] = bpf_ktime_get_ns();
	else
		count(STAT_IMPORT_TOO_DEEP);
	st->imports = i + 1;
	__sync_fetch_and_add(&imports_in_progress, 1);
	return 0;
}

SEC("usdt")
int BPF_USDT(import_done, const char *module, int found)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
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
		return 0;
	}
	struct import_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_IMPORT);
		return 0;
	}
	/* After the pop: depth counts the enclosing spans. */
	fill_header(&e->h, id, MARKER_IMPORT, start, now, depth);
	e->found = found;
	e->nesting = nesting;
	if (bpf_probe_read_user_str(e->module, sizeof(e->module), module) < 0)
		e->module[0] = '\0';
	submit(e, sizeof(*e));
	return 0;
}

#endif /* PYUSDT_GC_IMPORT_H */
