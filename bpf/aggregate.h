// SPDX-License-Identifier: Apache-2.0
/* In-kernel aggregation (--metrics-only): per-CPU tables of durations and counts, in the
 * buckets of the exported histogram; user space sums the CPUs.
 * Included by pyusdt.bpf.c only (one object, one skeleton). */
#ifndef PYUSDT_AGGREGATE_H
#define PYUSDT_AGGREGATE_H

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

/* DURATION_BOUNDS of src/model/metrics.rs in ns, written by the loader before load (the one
 * source is the Rust constant): a duration d falls in bucket i, the number of bounds below d
 * (bounds are inclusive upper limits, as OTLP's explicit buckets). */
const volatile __u64 duration_bounds_ns[DURATION_BUCKETS - 1] = {};

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

#endif /* PYUSDT_AGGREGATE_H */
