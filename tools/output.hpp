// What the hl7 tool's commands share: their failure type and how they write things out.
#pragma once

#include <boost/asio/ip/tcp.hpp>
#include <boost/system/error_code.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace hl7::tool {

/// Exit statuses.
inline constexpr int exit_ok = 0;
inline constexpr int exit_failed = 1; ///< a message not accepted, input that does not parse, I/O
inline constexpr int exit_usage = 2;  ///< bad arguments: options, host, port, path, files

/// Ends a command: main prints `hl7: <what>` on standard error and exits with `status`.
struct failure : std::runtime_error {
    failure(int status, const std::string& what) : std::runtime_error(what), status(status) {}
    int status;
};

/// `text` as a JSON string, quotes included. Bytes that are not valid UTF-8 are written as
/// the code points of the same value (read as Latin-1), so the result is always valid JSON.
std::string json_string(std::string_view text);

/// `host:port`, with an IPv6 address in brackets: `127.0.0.1:2575`, `[::1]:2575`.
std::string host_port(std::string_view host, std::uint16_t port);
std::string host_port(const boost::asio::ip::tcp::endpoint& endpoint);

/// An IPv6 address without the brackets it may have been given in.
std::string_view strip_brackets(std::string_view host);

/// The error's message as part of a sentence: `connection refused`, not `Connection refused`.
std::string describe(const boost::system::error_code& ec);

/// Writes all of `bytes` to standard output and flushes it, so that a reader at the other
/// end of a pipe sees each record at once. Throws failure when standard output is gone.
void write_stdout(std::string_view bytes);

} // namespace hl7::tool
