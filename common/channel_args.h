// The gRPC settings of the rank listener, in one place: the server's
// listener (server/merge_server.cc), the rank client's channel
// (client/rank_client.cc) and the benchmark's echo baseline
// (bench/grpc_plane_bench.cc) all take them from here.
//
// Partials are MBs per step: messages may be large (a part's payload is
// bounded by kMaxPayloadBytes), and the HTTP/2 stream window starts large
// instead of waiting for BDP probing to grow it from 64 KiB.
#ifndef DCPMERGE_COMMON_CHANNEL_ARGS_H_
#define DCPMERGE_COMMON_CHANNEL_ARGS_H_

#include "common/group_spec.h"
#include "grpcpp/server_builder.h"
#include "grpcpp/support/channel_arguments.h"

namespace dcpmerge {

// Largest message the rank listener accepts or sends: a part's partial
// output and LSE (each bounded by kMaxPayloadBytes) plus headroom.
inline constexpr int kMaxRankListenerMessageBytes = static_cast<int>(2 * kMaxPayloadBytes + (16 << 20));
// Largest message a rank's channel sends or receives.
inline constexpr int kMaxRankChannelMessageBytes = 512 << 20;
// Initial HTTP/2 stream window, both ends.
inline constexpr int kStreamLookaheadBytes = 64 << 20;

// A rank's channel (RankClient::Connect).
grpc::ChannelArguments RankChannelArguments();
// The rank listener (RankControl + MergeData).
void ConfigureRankListener(grpc::ServerBuilder* builder);

}  // namespace dcpmerge

#endif  // DCPMERGE_COMMON_CHANNEL_ARGS_H_
