// SPDX-License-Identifier: Apache-2.0
/* Read-only switches set before load, the globals `run` sets, the ring buffer, the counters,
 * the processes followed, minimal CO-RE views of kernel types, and the helpers every program
 * uses to count, filter and submit.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_MAPS_H
#define PYUSDT_MAPS_H

/* Set by the loader before load(). */
/* Wake user space once a CPU has written this much since its last wakeup (user space sets
 * it to the pending budget divided by the number of CPUs). */
const volatile __u64 wakeup_bytes = 128 * 1024;
const volatile bool filter_tgid = false;       /* only trace tgids in `traced` (pyusdt run) */
const volatile bool audit_args = false;        /* copy audit arguments (--audit-args) */
/* Read each audit event's argument count: only where a view shows it (console, JSON lines),
 * as it costs a read of the process's memory per event. */
const volatile bool audit_nargs = false;
const volatile bool flow_lines = false;        /* flow: report line events (--lines) */
const volatile __u64 min_function_ns = 0;      /* function spans: shorter calls are not sent */
const volatile bool report_execs = false;      /* agent: tell user space of every exec */
const volatile bool metrics_only = false;      /* --metrics-only: aggregate here, no records */
const volatile bool function_probes = false;   /* --probes function: calls are on the stacks */
const volatile bool time_calls = false;        /* top: time each call, not only count it */

/* Set by `pyusdt run` after load: its own PID namespace (device, inode) and its PID there.
 * Processes it forks are traced; comparing in its own namespace keeps this right when
 * pyusdt runs in a container without the host's PID namespace. */
__u64 runner_ns_dev = 0;
__u64 runner_ns_ino = 0;
__u32 runner_ns_tgid = 0;
/* Host tgid of the runner's first child (the command), for naming it in the summary. */
__u32 runner_first_child = 0;
/* The same while that process lives (0 after): most events of `run`/`top -- CMD` come from
 * it, and a global is read for free where the `traced` lookup cost about 40 ns per call. */
__u32 command_tgid = 0;

/* Referenced so that the skeleton generator emits these types for the Rust decoder. */
struct gc_event _gc_event = {};
struct import_event _import_event = {};
struct audit_event _audit_event = {};
struct audit_ref_event _audit_ref_event = {};
struct audit_ref_count_key _audit_ref_count_key = {};
struct audit_image _audit_image = {};
struct process_event _process_event = {};
struct audit_args_event _audit_args_event = {};
enum marker _marker = MARKER_GC;
enum stat _stat = STAT_DROP_GC;
struct func_hits _func_hits = {};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 1024 * 1024); /* resized by the loader */
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* Processes followed by `pyusdt run`: the command and every descendant. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} traced SEC(".maps");

/* Minimal CO-RE views of kernel types: relocated against the running kernel's BTF. */
struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
	unsigned long env_start;
	unsigned long env_end;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	struct mm_struct *mm;
} __attribute__((preserve_access_index));

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &stat);
	if (v)
		(*v)++;
}

static __always_inline bool wanted(__u32 tgid)
{
	return !filter_tgid || tgid == command_tgid || bpf_map_lookup_elem(&traced, &tgid);
}

/* Bytes each CPU has written since it last woke user space. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unwoken_bytes SEC(".maps");

/* Batched wakeups: a wakeup per event made traced programs 4x slower. Each CPU wakes user
 * space once per `wakeup_bytes` it wrote, counted in a per-CPU slot: asking the ring how much
 * is pending (bpf_ringbuf_query) reads the consumer's position, a cache line user space writes
 * for every record, and once the consumer lagged it forced a wakeup per event; together
 * 600 ns per event here. User space also drains on a timer, so a quiet stream is still
 * delivered promptly. */
static __always_inline __u64 wakeup_flags(__u64 size)
{
	__u32 zero = 0;
	__u64 *unwoken = bpf_map_lookup_elem(&unwoken_bytes, &zero);
	if (unwoken) {
		*unwoken += size;
		if (*unwoken >= wakeup_bytes) {
			*unwoken = 0;
			return BPF_RB_FORCE_WAKEUP;
		}
	}
	return BPF_RB_NO_WAKEUP;
}

static __always_inline void submit(void *e, __u64 size)
{
	bpf_ringbuf_submit(e, wakeup_flags(size));
}

/* `depth`: spans in progress on the thread (0 when the caller knows there are none). */
static __always_inline void fill_header(struct event_header *h, __u64 id, __u8 marker,
					__u64 start, __u64 end, __u32 depth)
{
	h->start_ns = start;
	h->end_ns = end;
	h->pid = id >> 32;
	h->tid = (__u32)id;
	h->marker = marker;
	h->depth = depth > 255 ? 255 : depth;
	h->source = SOURCE_MARKER;
	__builtin_memset(h->_pad, 0, sizeof(h->_pad));
}

#endif /* PYUSDT_MAPS_H */
