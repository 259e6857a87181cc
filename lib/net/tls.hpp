// TLS plumbing shared by the client and the server: building OpenSSL contexts from the
// options, naming what went wrong, and a stream that is a TCP socket or TLS over it.
#pragma once

#include <hl7/error.hpp>
#include <hl7/net/host.hpp>
#include <hl7/net/tls.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/outcome/result.hpp>

#include <algorithm>
#include <array>
#include <memory>
#include <optional>

namespace hl7::detail {

namespace outcome = BOOST_OUTCOME_V2_NAMESPACE;

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

/// A TCP socket, or TLS over it. The socket is referenced, not owned.
class stream {
public:
    stream(boost::asio::ip::tcp::socket& socket, boost::asio::ssl::context* context) : socket_(socket)
    {
        if (context) {
            tls_.emplace(socket, *context);
        } else {
            // For write_now; Asio's own operations are unaffected by this flag.
            boost::system::error_code ignored;
            socket_.non_blocking(true, ignored);
        }
    }

    bool secure() const noexcept { return tls_.has_value(); }
    SSL* native_handle() { return tls_ ? tls_->native_handle() : nullptr; }

    template <class Token>
    auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Token&& token)
    {
        return tls_->async_handshake(type, std::forward<Token>(token));
    }

    template <class Buffers, class Token>
    auto async_read_some(const Buffers& buffers, Token&& token)
    {
        if (tls_)
            return tls_->async_read_some(buffers, std::forward<Token>(token));
        return socket_.async_read_some(buffers, std::forward<Token>(token));
    }

    /// Writes what the socket takes at once, without blocking and without a trip through the
    /// scheduler (a small frame nearly always goes out whole); returns the bytes written.
    /// Over TLS, whose records go through async_write, it writes nothing. An error is left
    /// for the async_write of the rest to report.
    template <std::size_t N>
    std::size_t write_now(const std::array<boost::asio::const_buffer, N>& buffers)
    {
        if (tls_)
            return 0;
        boost::system::error_code ec;
        const std::size_t n = socket_.write_some(buffers, ec);
        return ec ? 0 : n;
    }

    template <class Buffers, class Token>
    auto async_write(const Buffers& buffers, Token&& token)
    {
        if (tls_)
            return boost::asio::async_write(*tls_, buffers, std::forward<Token>(token));
        return boost::asio::async_write(socket_, buffers, std::forward<Token>(token));
    }

private:
    boost::asio::ip::tcp::socket& socket_;
    std::optional<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
};

/// `buffers` without their first `n` bytes.
template <std::size_t N>
std::array<boost::asio::const_buffer, N> consume(std::array<boost::asio::const_buffer, N> buffers, std::size_t n)
{
    for (auto& b : buffers) {
        const std::size_t k = std::min(n, b.size());
        b += k;
        n -= k;
    }
    return buffers;
}

} // namespace hl7::detail
