#include "common/channel_args.h"

namespace dcpmerge {

grpc::ChannelArguments RankChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxRankChannelMessageBytes);
  args.SetMaxSendMessageSize(kMaxRankChannelMessageBytes);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kStreamLookaheadBytes);
  return args;
}

void ConfigureRankListener(grpc::ServerBuilder* builder) {
  builder->SetMaxReceiveMessageSize(kMaxRankListenerMessageBytes);
  builder->SetMaxSendMessageSize(kMaxRankListenerMessageBytes);
  builder->AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, kStreamLookaheadBytes);
}

}  // namespace dcpmerge
