#include "client_flags.hpp"

#include "output.hpp"

#include <algorithm>
#include <cmath>

namespace hl7::tool {

std::chrono::milliseconds to_ms(double seconds)
{
    constexpr double year = 365.0 * 24 * 3600; // longer is forever, and must not overflow
    return std::chrono::milliseconds(static_cast<std::int64_t>(std::ceil(std::min(seconds, year) * 1000)));
}

void client_flags::define(CLI::App& c)
{
    c.add_option("--port,-p", port, "Port to connect to (1-65535)")->type_name("PORT")->required();
    c.add_option("--host", host, "IPv4 address, IPv6 address (brackets optional) or DNS name")
        ->type_name("HOST")
        ->capture_default_str();
    c.add_option("--ack-timeout", ack_timeout, "Seconds to wait for each acknowledgement")
        ->type_name("S")
        ->capture_default_str();
    c.add_option("--connect-timeout", connect_timeout, "Seconds allowed for each connection attempt")
        ->type_name("S")
        ->capture_default_str();
    c.add_option("--retries", retries, "Consecutive failed connection attempts before giving up (0: never)")
        ->type_name("N")
        ->capture_default_str();
    c.add_option("--max-frame", max_frame, "Largest message or acknowledgement")
        ->type_name("BYTES")
        ->capture_default_str();
    c.add_option("--window", window,
                 "Messages written before their ACKs, each ACK matched to its message by MSA-2 (1: each\n"
                 "message waits for the previous one's ACK; more needs a peer that reads pipelined messages)")
        ->type_name("N")
        ->check(CLI::Range(std::size_t{1}, std::size_t{1024}))
        ->capture_default_str();
    c.add_flag("--tls", tls, "Use TLS (implied by any --tls-* option); the server's certificate is verified");
    c.add_option("--tls-ca", tls_ca, "PEM file of the CAs to trust (default: the system's)")->type_name("FILE");
    c.add_option("--tls-cert", tls_cert, "PEM client certificate, for mutual TLS")->type_name("FILE");
    c.add_option("--tls-key", tls_key, "PEM private key of --tls-cert")->type_name("FILE");
    c.add_option("--tls-server-name", tls_server_name,
                 "Name (or address) the server's certificate must carry (default: --host)")
        ->type_name("NAME");
    c.add_flag("--tls-insecure", tls_insecure,
               "DANGEROUS, for tests: accept any server certificate for any name (still encrypted)");
}

connection_options client_flags::options() const
{
    if (port < 1 || port > 65535)
        throw failure(exit_usage, "invalid port '" + std::to_string(port) + "': not in 1-65535");
    if (!(ack_timeout > 0) || !(connect_timeout > 0))
        throw failure(exit_usage, "timeouts must be more than 0 seconds");
    if (max_frame == 0)
        throw failure(exit_usage, "--max-frame must be at least 1 byte");
    if (!parse_host(host))
        throw failure(exit_usage, "invalid host '" + host + "'");
    connection_options co;
    co.connect_timeout = to_ms(connect_timeout);
    co.ack_timeout = to_ms(ack_timeout);
    co.max_frame = max_frame;
    co.max_in_flight = window;
    co.reconnect.max_attempts = retries;
    if (tls || tls_insecure || !tls_ca.empty() || !tls_cert.empty() || !tls_key.empty() || !tls_server_name.empty()) {
        if (tls_cert.empty() != tls_key.empty())
            throw failure(exit_usage, "--tls-cert and --tls-key go together");
        co.tls = tls_client_options{.ca_file = tls_ca,
                                    .certificate_file = tls_cert,
                                    .private_key_file = tls_key,
                                    .server_name = tls_server_name,
                                    .handshake_timeout = co.connect_timeout,
                                    .insecure_skip_verification = tls_insecure};
    }
    return co;
}

std::string client_flags::peer() const
{
    return host_port(host, static_cast<std::uint16_t>(port));
}

} // namespace hl7::tool
