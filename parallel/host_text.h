// Text between the ranks of a host-memory (MPI) communicator: error messages that only some ranks
// found, checkpoint indexes. The Communicator moves typed elements, so text travels as its length
// and then its bytes packed in i32 words.
#pragma once
#include <string>

#include "parallel/communicator.h"

namespace linmoe {

void send_text(Communicator& comm, const std::string& text, int peer, int tag);
std::string recv_text(Communicator& comm, int peer, int tag);
// The root's text replaces `text` on every rank.
void broadcast_text(Communicator& comm, std::string& text, int root);

}  // namespace linmoe
