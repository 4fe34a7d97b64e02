// SPDX-License-Identifier: Apache-2.0
/* The audit marker: the event name (sent by address when it is a literal of the interpreter
 * file), optionally its argument count and arguments, or a count per name (--metrics-only).
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_AUDIT_H
#define PYUSDT_AUDIT_H

/* Interpreter files whose audit event names are sent by address (struct audit_image in
 * pyusdt.h), written by user space before it attaches with the index in the cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AUDIT_IMAGES);
	__type(key, __u32);
	__type(value, struct audit_image);
} audit_images SEC(".maps");

/* Copies the first AUDIT_ARGS items of the argument tuple: type name and raw memory. */
static __always_inline void copy_audit_args(struct audit_args_event *e, void *args,
					    __u64 layout, __s64 nargs)
{
	/* ob_item follows ob_size in a tuple, and from 3.14 on the cached hash (ob_hash) between
	 * them (measured: items at +32 on 3.14.8 and 3.15.0, +24 on 3.13). */
	__u64 minor = (layout >> 8) & 0xff;
	char *items = (char *)args + (layout & 0xff) + (minor >= 14 ? 16 : 8);
#pragma unroll
	for (int i = 0; i < AUDIT_ARGS; i++) {
		struct audit_arg *a = &e->args[i];
		a->ok = 0;
		a->_pad = 0;
		if (i >= nargs)
			continue;
		char *item = 0, *type = 0, *tp_name = 0;
		if (bpf_probe_read_user(&item, sizeof(item), items + 8 * i) < 0 || !item)
			continue;
		if (bpf_probe_read_user(&type, sizeof(type), item + 8) < 0 || !type)
			continue;
		/* tp_name follows the type object's PyVarObject head. */
		if (bpf_probe_read_user(&tp_name, sizeof(tp_name), type + 24) < 0 || !tp_name)
			continue;
		if (bpf_probe_read_user_str(a->type, sizeof(a->type), tp_name) < 0)
			continue;
		if (bpf_probe_read_user(a->raw, sizeof(a->raw), item + 16) < 0)
			continue;
		a->ok = 1;
	}
}

/* Adds one to `key`'s count in the per-CPU `map`; false when the table is full. */
static __always_inline bool count_in(void *map, void *key)
{
	__u64 *n = LOOKUP_OR_ZERO(map, key, __u64);
	if (!n)
		return false;
	(*n)++;
	return true;
}

/* True when the last process this CPU saw described is the current one, and no process was
 * forgotten since; otherwise this CPU remembers the current one, which the caller describes
 * (note_process). The audit marker fires per event, and note_process's hash lookup cost about
 * 90 ns each time. */
static __always_inline bool described_here(__u64 id)
{
	__u32 zero = 0;
	struct noted *n = bpf_map_lookup_elem(&noted_here, &zero);
	__u64 forgotten = processes_forgotten;
	if (n && n->tgid == (__u32)(id >> 32) && n->forgotten == forgotten)
		return true;
	if (n) {
		n->tgid = id >> 32;
		n->forgotten = forgotten;
	}
	return false;
}

/* True when the event's name is a literal of the interpreter file that the attachment's
 * cookie names (audit_images): then `*image` is that entry's index + 1 and `*vaddr` the name's
 * address in the file. The handler sees the trap's address as the instruction pointer, which
 * is the marker's address in the file plus the file's load bias. */
static __always_inline bool literal_name(struct pt_regs *ctx, __u64 layout, const char *event,
					 __u32 *image, __u64 *vaddr)
{
	__u32 idx = (layout >> 16) & 0xffff;
	if (!idx)
		return false;
	idx -= 1;
	struct audit_image *im = bpf_map_lookup_elem(&audit_images, &idx);
	if (!im || !im->site)
		return false;
	__u64 at = (__u64)event - PT_REGS_IP(ctx) + im->site;
	if (at < im->ro_start || at >= im->ro_end)
		return false;
	*image = idx + 1;
	*vaddr = at;
	return true;
}

SEC("usdt")
int audit(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!wanted(id >> 32))
		return 0;
	struct __bpf_usdt_spec *spec = usdt_spec(ctx);
	const char *event = (const char *)usdt_arg(ctx, spec, 0);
	/* The cookie, set by user space per interpreter file: the argument tuple's ob_size
	 * offset (0 where the layout is not known), and the file's audit_images entry. */
	__u64 layout = usdt_spec_cookie(spec);
	__u64 ob_size_offset = layout & 0xff;
	__u32 image = 0;
	__u64 name_vaddr = 0;
	bool literal = literal_name(ctx, layout, event, &image, &name_vaddr);
	/* Helper calls are dear (bpftrace's count(), which makes one, costs about a third of a
	 * record here: bench/bpf_time.sh), so the counting path makes as few as it can: the
	 * clock only to describe a process, and not the thread's storage. */
	if (metrics_only) {
		bool counted;
		if (literal) {
			struct audit_ref_count_key key = {
				.tgid = id >> 32,
				.image = image,
				.name_vaddr = name_vaddr,
			};
			counted = count_in(&audit_ref_counts, &key);
		} else {
			struct audit_count_key key = { .tgid = id >> 32 };
			if (bpf_probe_read_user_str(key.name, sizeof(key.name), event) < 0)
				key.name[0] = '\0';
			counted = count_in(&audit_counts, &key);
		}
		/* A full table loses the event: counted as a drop, like a full ring. */
		if (!counted)
			count(STAT_DROP_AUDIT);
		if (!described_here(id))
			note_process(id, bpf_ktime_get_ns());
		return 0;
	}
	__u64 now = bpf_ktime_get_ns();
	if (!described_here(id))
		note_process(id, now);
	/* While no thread has a span in progress, the depth is 0 without a look at the
	 * thread's stack (two helper calls). A thread without a stack has none in progress. */
	__u32 depth = 0;
	if (function_probes || imports_in_progress) {
		struct span_stack *st = current_stack(false);
		depth = st ? st->depth : 0;
	}
	void *args = (void *)usdt_arg(ctx, spec, 1);
	__s64 nargs = -1;
	if ((audit_nargs || audit_args) && ob_size_offset &&
	    bpf_probe_read_user(&nargs, sizeof(nargs), (char *)args + ob_size_offset) < 0)
		nargs = -1;
	if (literal && !audit_args) {
		/* Built on the stack and copied in: one helper call where reserve and submit are
		 * two, for a record this small. */
		struct audit_ref_event r;
		fill_header(&r.h, id, MARKER_AUDIT_REF, now, now, depth);
		r.nargs = nargs;
		r.image = image;
		r._pad = 0;
		r.name_vaddr = name_vaddr;
		if (bpf_ringbuf_output(&events, &r, sizeof(r), wakeup_flags(sizeof(r))))
			count(STAT_DROP_AUDIT);
		return 0;
	}
	struct audit_event *e;
	if (audit_args && ob_size_offset) {
		struct audit_args_event *ae = bpf_ringbuf_reserve(&events, sizeof(*ae), 0);
		if (!ae) {
			count(STAT_DROP_AUDIT);
			return 0;
		}
		ae->layout = layout;
		copy_audit_args(ae, args, layout, nargs);
		e = &ae->base;
		fill_header(&e->h, id, MARKER_AUDIT_ARGS, now, now, depth);
	} else {
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e) {
			count(STAT_DROP_AUDIT);
			return 0;
		}
		fill_header(&e->h, id, MARKER_AUDIT, now, now, depth);
	}
	e->nargs = nargs;
	if (bpf_probe_read_user_str(e->name, sizeof(e->name), event) < 0)
		e->name[0] = '\0';
	submit(e, sizeof(*e));
	return 0;
}

#endif /* PYUSDT_AUDIT_H */
