// C entry point of the emulated fused beam step: csrc/beam_step.cuh itself (kernels, plan,
// argument checks) run through detail::beam::run_beam_step, as beam_step.cu launches it, with the
// workspace and outputs in guarded buffers.
#include "cuda_emu.h"

#include "beam_step.cuh"
#include "emu_entry.h"

extern "C" {

// Inputs as launch_beam_step takes them (host memory here; override_child / override_bid null
// for no override). limits: row_smem_children,
// merge_smem_keys, sort_smem_keys, each <= 0 for the launcher's default. Outputs [N, k]. log: the
// launches made, or the error. Returns 0, 1 (invalid argument) or 2 (emulation error).
int ega_emu_beam_step(const void* logits, int dtype, int64_t logits_row_stride, const float* beam_scores,
                      const int64_t* row_node, const int64_t* child_ptr, const int32_t* child_code,
                      const float* child_max_bid, const uint8_t* allowed, const int64_t* override_child,
                      const float* override_bid, int64_t override_entries, int64_t requests, int64_t beams,
                      int64_t vocab, int64_t k, float alpha, float log_beta, const int64_t* limits,
                      float* score, int64_t* parent, int64_t* token, int64_t* child, float* logp,
                      char* log, int64_t log_len) {
  return ega_emu::guarded_call(log, log_len, [&](std::string& text) {
    ega_infer::BeamStepLimits lim{};
    if (limits[0] > 0) lim.row_smem_children = limits[0];
    if (limits[1] > 0) lim.merge_smem_keys = limits[1];
    if (limits[2] > 0) lim.sort_smem_keys = limits[2];
    const int64_t bytes = ega_infer::beam_step_workspace_bytes(requests, beams, vocab, k, lim);
    ega_emu::Guarded workspace(static_cast<size_t>(bytes));
    const size_t n = static_cast<size_t>(requests * k);
    ega_emu::Guarded out_score(n * 4), out_parent(n * 8), out_token(n * 8), out_child(n * 8), out_logp(n * 4);

    ega_infer::BeamStepArgs args{};
    args.logits = logits;
    args.logits_dtype = static_cast<ega_infer::DType>(dtype);
    args.logits_row_stride = logits_row_stride;
    args.beam_scores = beam_scores;
    args.row_node = row_node;
    args.child_ptr = child_ptr;
    args.child_code = child_code;
    args.child_max_bid = child_max_bid;
    args.allowed = allowed;
    args.override_child = override_child;
    args.override_bid = override_bid;
    args.override_entries = override_entries;
    args.requests = requests;
    args.beams = beams;
    args.vocab = vocab;
    args.k = k;
    args.alpha = alpha;
    args.log_beta = log_beta;
    args.score = out_score.as<float>();
    args.parent = out_parent.as<int64_t>();
    args.token = out_token.as<int64_t>();
    args.child = out_child.as<int64_t>();
    args.logp = out_logp.as<float>();
    ega_infer::detail::beam::run_beam_step(args, lim, workspace.data(), bytes, ega_emu::Launcher{&text});

    workspace.check("the workspace");
    out_score.copy_to(score, "score");
    out_parent.copy_to(parent, "parent");
    out_token.copy_to(token, "token");
    out_child.copy_to(child, "child");
    out_logp.copy_to(logp, "logp");
  });
}

// Workspace bytes for a shape under the given limits (as ega_emu_beam_step takes them), or -1 with
// the error in log.
int64_t ega_emu_beam_step_workspace_bytes(int64_t requests, int64_t beams, int64_t vocab, int64_t k,
                                          const int64_t* limits, char* log, int64_t log_len) {
  int64_t bytes = -1;
  ega_emu::guarded_call(log, log_len, [&](std::string&) {
    ega_infer::BeamStepLimits lim{};
    if (limits[0] > 0) lim.row_smem_children = limits[0];
    if (limits[1] > 0) lim.merge_smem_keys = limits[1];
    if (limits[2] > 0) lim.sort_smem_keys = limits[2];
    bytes = ega_infer::beam_step_workspace_bytes(requests, beams, vocab, k, lim);
  });
  return bytes;
}

// The kernels' token weight on the host (the same function), for the overflow tests.
float ega_emu_token_weight(float a, float log_beta) { return ega_infer::detail::beam::token_weight(a, log_beta); }

}  // extern "C"
