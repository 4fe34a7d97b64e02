// SPDX-License-Identifier: Apache-2.0
/* BPF side of pyusdt: CPython gc/import/audit markers -> paired events in one ring buffer. */
#include <stdbool.h>
#include <linux/types.h>
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/usdt.bpf.h>
#include "pyusdt.h"
#include "usdt_args.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

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

/* GC and import durations per process and series (--metrics-only), per CPU; user space sums
 * the CPUs and deletes a process's keys once it has exited. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* as audit_counts */
	__type(key, struct duration_key);
	__type(value, struct duration_agg);
} gc_agg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct duration_key);
	__type(value, struct duration_agg);
} import_agg SEC(".maps");

/* DURATION_BOUNDS of src/model/metrics.rs in ns: a duration d falls in bucket i, the number of
 * bounds below d (bounds are inclusive upper limits, as OTLP's explicit buckets). */
static const __u64 duration_bounds_ns[DURATION_BUCKETS - 1] = {
	10000ULL,     25000ULL,     50000ULL,      100000ULL,     250000ULL,
	500000ULL,    1000000ULL,   2500000ULL,    5000000ULL,    10000000ULL,
	25000000ULL,  50000000ULL,  100000000ULL,  250000000ULL,  500000000ULL,
	1000000000ULL, 2500000000ULL, 5000000000ULL, 10000000000ULL,
};

/* `key`'s value (a `type`) in `map`, added zeroed when absent; 0 when the table is full. If
 * another CPU added the key meanwhile (EEXIST), the second lookup finds it: in a per-CPU map,
 * this CPU's slot zeroed. A macro, so that the zero value is built only when the key is
 * missing (a duration_agg is 200 bytes of stack). */
#define LOOKUP_OR_ZERO(map, key, type)                                                             \
	({                                                                                         \
		type *found_ = bpf_map_lookup_elem(map, key);                                      \
		if (!found_) {                                                                     \
			type zero_;                                                                \
			__builtin_memset(&zero_, 0, sizeof(zero_));                                \
			bpf_map_update_elem(map, key, &zero_, BPF_NOEXIST);                        \
			found_ = bpf_map_lookup_elem(map, key);                                    \
		}                                                                                  \
		found_;                                                                            \
	})

/* Adds one done to `map`'s series `key`: `start` 0 when its start was not seen. Returns false
 * when the table is full (the event is lost, and the caller counts it). */
static __always_inline bool aggregate(void *map, void *key, __u64 start, __u64 now,
				      __s64 extra)
{
	struct duration_agg *a = LOOKUP_OR_ZERO(map, key, struct duration_agg);
	if (!a)
		return false;
	a->events++;
	a->extra += extra;
	if (!start || now < start)
		return true;
	__u64 d = now - start;
	__u32 i = 0;
#pragma unroll
	for (int k = 0; k < DURATION_BUCKETS - 1; k++)
		if (d > duration_bounds_ns[k])
			i++;
	if (i < DURATION_BUCKETS)
		a->buckets[i]++;
	/* A slot created on another CPU is zeroed: its first timed event sets the minimum. */
	if (a->timed == 0 || d < a->min_ns)
		a->min_ns = d;
	if (d > a->max_ns)
		a->max_ns = d;
	a->sum_ns += d;
	a->timed++;
	return true;
}

/* Audit events per process and name (--metrics-only), per CPU so that CPUs do not race on
 * an increment (a uprobe program runs with migration disabled; on a fully preemptible kernel
 * two tasks preempting each other on one CPU could still interleave, and an increment be
 * lost); user space sums the CPUs and deletes a process's keys once it has exited. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	/* Entries allocated as they come: a preallocated per-CPU table costs its size times
	 * the CPUs of the node, in use or not. */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct audit_count_key);
	__type(value, __u64);
} audit_counts SEC(".maps");

/* The same for events whose name is a literal of the interpreter file (audit_images), keyed
 * by its address: no copy of the name, and a 16-byte key to hash. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct audit_ref_count_key);
	__type(value, __u64);
} audit_ref_counts SEC(".maps");

/* Interpreter files whose audit event names are sent by address (struct audit_image in
 * pyusdt.h), written by user space before it attaches with the index in the cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, AUDIT_IMAGES);
	__type(key, __u32);
	__type(value, struct audit_image);
} audit_images SEC(".maps");

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

/* Imports in progress over all threads (pushed on a thread's stack and not yet popped). While
 * there are none and function probes are not loaded, no thread has a span in progress, and an
 * audit event needs no look at its thread's stack (two helper calls). A stack emptied or
 * dropped with imports in it (a sampling gap, exec, the thread's exit) gives them back
 * (release_imports); were one missed, the count would only stay too high, which costs the
 * shortcut, never a wrong depth. */
__u64 imports_in_progress = 0;
/* Processes that exited or started another program (forget_exited, forget_exec): a CPU's
 * memory of the last process it saw described (noted_here) holds only while none was
 * forgotten since, as its PID could be reused, or describe another program. */
__u64 processes_forgotten = 0;

struct noted {
	__u32 tgid;
	__u32 _pad;
	__u64 forgotten; /* processes_forgotten when it was noted */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct noted);
} noted_here SEC(".maps");

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

/* --metrics-only with function probes: durations of the calls of each code location whose
 * names were sent (code_sent), in the buckets of cpython.function.duration. The first call
 * of a location still comes as a record, carrying the names. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* as audit_counts */
	__type(key, struct code_ref);
	__type(value, struct duration_agg);
} func_agg SEC(".maps");

/* Processes that have sent an event since they started their program (forget_exec). The first
 * event of a process wakes user space at once, so that it reads /proc/PID (command line,
 * OTEL_SERVICE_NAME …) while the process still exists: a short-lived process could otherwise
 * be gone before a batched wakeup. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} seen_tgids SEC(".maps");

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

/* The current thread's span stack, created (zeroed) when `create`. */
static __always_inline struct span_stack *current_stack(bool create)
{
	return bpf_task_storage_get(&span_stacks, bpf_get_current_task_btf(), 0,
				    create ? BPF_LOCAL_STORAGE_GET_F_CREATE : 0);
}

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
	__builtin_memset(h->_pad, 0, sizeof(h->_pad));
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

/* Copies user memory [start, end) into `dst` (at most cap - 1 bytes, cap a power of two);
 * returns the bytes copied, 0 on failure. */
static __always_inline __u32 copy_user(char *dst, __u32 cap, unsigned long start,
				       unsigned long end)
{
	if (end <= start)
		return 0;
	__u64 len = end - start;
	if (len > cap - 1)
		len = cap - 1;
	/* The mask is the bound the verifier sees: len < cap whatever clang made of the test. */
	len &= cap - 1;
	if (len == 0 || bpf_probe_read_user(dst, len, (void *)start) < 0)
		return 0;
	return len;
}

/* The environment walk of note_process: only OTEL_* entries are copied, the others are read
 * a chunk at a time into this CPU's scratch (to find their end), which is cleared after. A
 * process's secrets (API keys, tokens in its environment) never reach the ring buffer. */
#define ENV_CHUNK 256
/* Entries (or chunks of long entries) looked at: 2048 * 255 bytes at least, 510 KiB. */
#define ENV_WALK_STEPS 2048
/* Without bpf_loop (kernels before 5.17) the walk is a loop that the verifier follows step by
 * step, in every program that describes processes: 512 steps exceed its limit, 64 do not. A
 * longer environment is then read from /proc/PID/environ by user space (incomplete walk). */
#define ENV_WALK_STEPS_UNROLLED 64

struct env_scratch {
	/* OTEL_* entries. Twice ENV_LEN, so that the verifier sees that a copy of at most ENV_LEN
	 * bytes from an offset below ENV_LEN stays inside. */
	char out[2 * ENV_LEN];
	char chunk[ENV_CHUNK] __attribute__((aligned(8))); /* cleared with 8-byte stores */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct env_scratch);
} env_scratch SEC(".maps");

struct env_walk {
	unsigned long p;   /* the next byte to look at */
	unsigned long end;
	__u32 len;         /* bytes of `out` filled: whole entries, each with its NUL */
	bool in_entry;     /* p is inside an entry not copied (one longer than a chunk) */
	bool incomplete;   /* an OTEL_* entry may be missing */
};

/* One step of the walk; 1 ends it. A bpf_loop callback: verified once, whatever the number of
 * steps. */
static long env_step(__u32 index, void *ctx)
{
	struct env_walk *w = ctx;
	if (w->p >= w->end)
		return 1;
	__u32 zero = 0;
	struct env_scratch *s = bpf_map_lookup_elem(&env_scratch, &zero);
	if (!s) {
		w->incomplete = true;
		return 1;
	}
	long n = bpf_probe_read_user_str(s->chunk, ENV_CHUNK, (void *)w->p);
	if (n <= 0) {
		w->incomplete = true;
		return 1;
	}
	if (!w->in_entry && n > 5 && s->chunk[0] == 'O' && s->chunk[1] == 'T' &&
	    s->chunk[2] == 'E' && s->chunk[3] == 'L' && s->chunk[4] == '_') {
		__u32 len = w->len;
		if (len >= ENV_LEN) {
			w->incomplete = true;
			return 1;
		}
		barrier_var(len); /* keep the mask: it is the bound the verifier sees */
		len &= ENV_LEN - 1;
		__u32 room = ENV_LEN - len;
		long m = bpf_probe_read_user_str(s->out + len, room, (void *)w->p);
		/* Unreadable, or cut to fit (m == room): not kept; user space reads /proc. */
		if (m <= 0 || m >= room) {
			w->incomplete = true;
			return 1;
		}
		w->len = len + m;
		w->p += m;
		return 0;
	}
	if (n < ENV_CHUNK) {
		/* The rest of the entry and its NUL were in the chunk. */
		w->p += n;
		w->in_entry = false;
	} else {
		w->p += ENV_CHUNK - 1;
		w->in_entry = true;
	}
	return 0;
}

/* Copies the OTEL_* entries of [start, end) into `dst` (ENV_LEN bytes); returns the bytes
 * copied and sets `incomplete` when one may be missing. */
static __always_inline __u32 copy_otel_env(char *dst, unsigned long start, unsigned long end,
					   bool *incomplete)
{
	struct env_walk w = { .p = start, .end = end };
	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_loop)) {
		bpf_loop(ENV_WALK_STEPS, env_step, &w, 0);
	} else {
		for (__u32 i = 0; i < ENV_WALK_STEPS_UNROLLED; i++)
			if (env_step(i, &w))
				break;
	}
	*incomplete = w.incomplete || w.p < w.end;
	__u32 zero = 0;
	struct env_scratch *s = bpf_map_lookup_elem(&env_scratch, &zero);
	if (!s)
		return 0;
	__builtin_memset(s->chunk, 0, ENV_CHUNK);
	__u32 len = w.len;
	if (len == 0 || len >= ENV_LEN)
		return 0;
	barrier_var(len);
	len &= ENV_LEN - 1;
	if (bpf_probe_read_kernel(dst, len, s->out) < 0)
		return 0;
	return len;
}

/* At a process's first event (and its first after an exec): describe it and wake user space
 * at once. */
static __always_inline void note_process(__u64 id, __u64 now)
{
	__u32 tgid = id >> 32;
	if (bpf_map_lookup_elem(&seen_tgids, &tgid))
		return;
	__u8 one = 1;
	bpf_map_update_elem(&seen_tgids, &tgid, &one, BPF_ANY);
	struct process_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count(STAT_DROP_PROCESS);
		return; /* user space falls back to /proc/PID */
	}
	fill_header(&e->h, id, MARKER_PROCESS, now, now, 0);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	unsigned long arg_start = BPF_CORE_READ(mm, arg_start), arg_end = BPF_CORE_READ(mm, arg_end);
	unsigned long env_start = BPF_CORE_READ(mm, env_start), env_end = BPF_CORE_READ(mm, env_end);
	e->args_len = copy_user(e->args, ARGS_LEN, arg_start, arg_end);
	bool env_incomplete = false;
	e->env_len = copy_otel_env(e->env, env_start, env_end, &env_incomplete);
	e->truncated = 0;
	e->_pad = 0;
	if (arg_end > arg_start && arg_end - arg_start > e->args_len)
		e->truncated |= PROCESS_ARGS_TRUNCATED;
	if (env_incomplete)
		e->truncated |= PROCESS_ENV_TRUNCATED;
	bpf_ringbuf_submit(e, BPF_RB_FORCE_WAKEUP);
}

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
	return 0;
}

/* A new program image starts with no import or collection in progress, and is described
 * again at its first event (its command line and environment are new). The agent also hears
 * of it: a container's new interpreter file is attached within a poll, not at the next rescan.
 * The record is a bare header (a few bytes per exec); user space reads /proc/PID. */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(forget_exec, struct task_struct *p)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32;
	bpf_map_delete_elem(&gc_starts, &tid);
	bpf_map_delete_elem(&seen_tgids, &tgid);
	__sync_fetch_and_add(&processes_forgotten, 1);
	struct task_struct *task = bpf_get_current_task_btf();
	struct span_stack *st = bpf_task_storage_get(&span_stacks, task, 0, 0);
	if (st)
		release_imports(st);
	bpf_task_storage_delete(&span_stacks, task);
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
	}
	return 0;
}
