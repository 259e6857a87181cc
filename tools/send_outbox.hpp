// hl7 send --outbox: every input message is committed to the outbox before anything is sent,
// then the outbox delivers them and the command reports each once it is final, in input order.
// Run again with the same input after being killed, it sends nothing twice that was final,
// queues nothing twice, and reports a message sent again from the ambiguous window as a
// possible duplicate.
#pragma once

#include "client_flags.hpp"
#include "outbox_common.hpp"

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace hl7::tool {

/// The flags hl7 send takes for the outbox.
struct send_outbox_flags {
    outbox_flags outbox;
    retry_flags retry;

    /// Defines --outbox, --synchronous, --max-attempts and --max-age on `send`.
    void define(CLI::App& send);
    bool enabled() const { return !outbox.path.empty(); }
};

/// Runs hl7 send through the outbox; the exit status of hl7 send.
int run_send_outbox(const send_outbox_flags& flags, const client_flags& client, bool json,
                    const std::vector<std::string>& files);

} // namespace hl7::tool
