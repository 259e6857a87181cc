// The hl7 tool's commands. main.cpp fills their options from the command line; each returns
// the exit status, or throws failure for an error that ends it (see output.hpp).
#pragma once

#include <hl7/model/ack.hpp>
#include <hl7/model/mllp.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace hl7::tool {

/// `hl7 send`: sends messages over one connection, one at a time, and prints each ACK.
struct send_options {
    std::string host = "127.0.0.1";
    int port = 0;
    double ack_timeout = 10;     ///< seconds
    double connect_timeout = 5;  ///< seconds, per attempt
    unsigned retries = 3;        ///< consecutive failed connection attempts before giving up
    std::size_t max_frame = mllp::default_max_frame;
    bool json = false;
    std::vector<std::string> files; ///< none or "-": standard input
    /// TLS (on when `tls` or any tls_* option is given).
    bool tls = false;
    std::string tls_ca, tls_cert, tls_key, tls_server_name;
    bool tls_insecure = false;
};
int run_send(const send_options& options);

/// `hl7 listen`: an MLLP server that acknowledges and prints what it receives.
struct listen_options {
    std::string host = "127.0.0.1";
    int port = -1;
    /// accept: AA, or AR for a message without MSH-9, MSH-10 or MSH-12; otherwise every
    /// message gets this verdict.
    verdict reply = verdict::accept;
    std::string out = "-"; ///< "-": standard output; otherwise a directory, one file per message
    bool json = false;
    std::size_t max_frame = mllp::default_max_frame;
    /// TLS (on when `tls` or any tls_* option is given): certificate and key required;
    /// tls_ca, when set, requires and verifies client certificates.
    bool tls = false;
    std::string tls_ca, tls_cert, tls_key;
};
int run_listen(const listen_options& options);

/// `hl7 get`: prints the values at paths of one message.
struct get_options {
    std::vector<std::string> paths;
    std::string file = "-";
    bool raw = false;
};
int run_get(const get_options& options);

} // namespace hl7::tool
