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

/* One entry file, one skeleton; each concern in its own header, in the order they build on
 * each other. */
#include "maps.h"
#include "stack.h"
#include "process.h"
#include "aggregate.h"
#include "gc_import.h"
#include "audit.h"
#include "hooks.h"
#include "functions.h"
#include "flow.h"
#include "gate.h"
#include "tasks.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";
