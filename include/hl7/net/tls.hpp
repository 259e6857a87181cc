// TLS for MLLP (IHE ATNA secure node): what a client and a server need to know.
//
// Secure by default: TLS 1.2 or later only; the server's certificate must chain to a
// trusted CA and name the host (RFC 6125: subjectAltName DNS names, IP addresses included);
// a failed handshake never falls back to plaintext. Failures are named errors
// (errc::tls_untrusted_certificate, tls_name_mismatch, tls_certificate_expired,
// tls_no_client_certificate, tls_plaintext_peer, tls_handshake_timeout, tls_handshake_failed).
#pragma once

#include <chrono>
#include <string>
#include <vector>

namespace hl7 {

/// TLS on a client connection (connection_options::tls).
struct tls_client_options {
    /// PEM file of CA certificates to trust. With ca_directory also empty, the system's
    /// default trust store is used.
    std::string ca_file = {};
    /// Directory of CA certificates to trust (OpenSSL hashed-name layout).
    std::string ca_directory = {};
    /// PEM certificate (chain) presented to the server, for mutual TLS; empty: none.
    std::string certificate_file = {};
    /// PEM private key of certificate_file.
    std::string private_key_file = {};
    /// The name (or IP address) the server's certificate must carry, also sent as SNI when
    /// it is a name. Empty: the client's host.
    std::string server_name = {};
    /// OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's defaults). Empty: the
    /// defaults.
    std::string ciphers = {};
    /// Time allowed for the handshake, after the TCP connection is up; its expiry is a
    /// failed connection attempt (errc::tls_handshake_timeout).
    std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10);
    /// DANGEROUS, for tests only: accept any server certificate, trusted or not, for any
    /// name. The connection is still encrypted, but anyone in the path can read it.
    bool insecure_skip_verification = false;
};

/// TLS on a server (server_options::tls).
struct tls_server_options {
    /// PEM certificate (chain) of the server.
    std::string certificate_file = {};
    /// PEM private key of certificate_file.
    std::string private_key_file = {};
    /// When set: PEM file of the CAs whose client certificates are accepted; every client
    /// must then present one (mutual TLS). Empty: no client certificate is asked for.
    std::string client_ca_file = {};
    /// OpenSSL cipher list for TLS 1.2. Empty: the defaults.
    std::string ciphers = {};
    /// Time a client has to complete the handshake, from the connection's acceptance; on
    /// expiry the connection is closed (errc::tls_handshake_timeout).
    std::chrono::milliseconds handshake_timeout = std::chrono::seconds(10);
    /// Mutual TLS authorisation (needs client_ca_file): when not empty, a client is let in
    /// only when its (trusted) certificate carries one of these names as its subject CN or as
    /// a subjectAltName DNS name or IP address (compared exactly, DNS names and CNs without
    /// regard to ASCII case; no wildcards). Otherwise its connection is closed right after
    /// the handshake (errc::tls_client_not_allowed). Empty: every trusted client is let in.
    std::vector<std::string> allowed_client_names = {};
};

} // namespace hl7
