// TLS plumbing shared by the client and the server: building OpenSSL contexts from the
// options, and naming what went wrong.
#pragma once

#include <hl7/error.hpp>
#include <hl7/net/host.hpp>
#include <hl7/net/tls.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/outcome/result.hpp>

#include <memory>
#include <string>
#include <vector>

namespace hl7::detail {

/// A client context: TLS 1.2+, trust store, optional client certificate, verification on
/// (unless insecure_skip_verification). Fails with errc::tls_setup_failed.
outcome::result<std::shared_ptr<boost::asio::ssl::context>> make_client_context(const tls_client_options& options);

/// A server context: TLS 1.2+, certificate and key, and when client_ca_file is set a
/// required, verified client certificate. Fails with errc::tls_setup_failed.
outcome::result<std::shared_ptr<boost::asio::ssl::context>> make_server_context(const tls_server_options& options);

/// Sets up one client handshake: SNI (for a name) and the name or address the server's
/// certificate must carry (`options.server_name`, else the host).
void prepare_client(SSL* ssl, const tls_client_options& options, const host& host);

/// Turns a handshake or TLS read error into one of the library's TLS errors when it is one
/// of the failures they name; anything else is returned as it is.
boost::system::error_code name_tls_error(boost::system::error_code ec, SSL* ssl);

/// The names the peer's certificate carries, for authorising a client by name: its subject
/// CNs, then its subjectAltName DNS names and IP addresses (as text). Empty without one.
std::vector<std::string> peer_certificate_names(SSL* ssl);

} // namespace hl7::detail
