// The transport of one MLLP connection, the same for the client's connections and the
// server's: a TCP socket or TLS over it, its socket options, reads with TLS failures named,
// and frames written at once when the socket takes them. Time is not its business: connect,
// handshake, acknowledgement and idle deadlines belong to the cores, which close the session
// when one passes.
#pragma once

#include "net/tls.hpp"

#include <hl7/model/mllp.hpp>

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>

namespace hl7::detail {

/// Asio opens and accepts sockets without close-on-exec. A child process the application
/// starts (a script, a converter) would inherit them: a connection closed here would stay open
/// at the peer, which sees no end, and a stopped server's port would go on taking connections
/// into a backlog nobody reads, for as long as the child lives.
inline void close_on_exec(int fd) noexcept
{
    ::fcntl(fd, F_SETFD, ::fcntl(fd, F_GETFD) | FD_CLOEXEC);
}

class session {
public:
    /// Takes `socket`, connected already (a server's) or to be connected through socket() (a
    /// client's); `tls` null for plaintext. Reads go through a buffer of `read_size` bytes.
    session(boost::asio::ip::tcp::socket socket, boost::asio::ssl::context* tls, std::size_t read_size)
        : socket_(std::move(socket)), buffer_(read_size)
    {
        if (tls)
            tls_.emplace(socket_, *tls);
    }
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    boost::asio::ip::tcp::socket& socket() noexcept { return socket_; }
    bool secure() const noexcept { return tls_.has_value(); }
    SSL* native_handle() noexcept { return tls_ ? tls_->native_handle() : nullptr; }

    /// Once the TCP connection is up: the peer's address, and the socket options.
    void connected()
    {
        boost::system::error_code ignored;
        close_on_exec(socket_.native_handle());
        peer_ = socket_.remote_endpoint(ignored);
        // Messages and replies are small and follow each other: Nagle would hold the second
        // back until the peer's delayed ACK of the first.
        socket_.set_option(boost::asio::ip::tcp::no_delay(true), ignored);
        // For start_write; Asio's own operations are unaffected by this flag.
        if (!tls_)
            socket_.non_blocking(true, ignored);
    }

    /// The peer's address (after connected()).
    const boost::asio::ip::tcp::endpoint& peer() const noexcept { return peer_; }

    /// The TLS handshake; `handler(error_code)` gets a failure named by name_tls_error.
    template <class Handler>
    void async_handshake(boost::asio::ssl::stream_base::handshake_type type, Handler&& handler)
    {
        tls_->async_handshake(type, [this, h = std::forward<Handler>(handler)](boost::system::error_code ec) mutable {
            h(ec ? name_tls_error(ec, tls_->native_handle()) : ec);
        });
    }

    /// Reads what has arrived; `handler(error_code, std::string_view bytes)`, the bytes valid
    /// until the next read. A TLS alert is named (TLS 1.3 reports a refused client
    /// certificate only after the handshake, with the first records).
    template <class Handler>
    void async_read_some(Handler&& handler)
    {
        auto done = [this, h = std::forward<Handler>(handler)](boost::system::error_code ec, std::size_t n) mutable {
            if (ec && tls_ && ec.category() == boost::asio::error::get_ssl_category())
                ec = name_tls_error(ec, tls_->native_handle());
            h(ec, std::string_view(buffer_.data(), n));
        };
        if (tls_)
            tls_->async_read_some(boost::asio::buffer(buffer_), std::move(done));
        else
            socket_.async_read_some(boost::asio::buffer(buffer_), std::move(done));
    }

    /// Starts writing `payload` as an MLLP frame; `payload` must stay valid until the write
    /// has finished. Returns true when the socket took the whole frame at once, without a trip
    /// through the scheduler (a small frame over plaintext nearly always goes out so);
    /// otherwise async_finish_write writes the rest.
    bool start_write(std::string_view payload)
    {
        static constexpr char start[] = {mllp::start_block};
        static constexpr char end[] = {mllp::end_block, mllp::carriage_return};
        frame_ = {boost::asio::buffer(start), boost::asio::buffer(payload.data(), payload.size()),
                  boost::asio::buffer(end)};
        if (tls_)
            return false; // TLS records go through async_write
        boost::system::error_code ec;
        const std::size_t n = socket_.write_some(frame_, ec);
        if (ec)
            return false; // the async_write of the rest reports it
        skip(n);
        return boost::asio::buffer_size(frame_) == 0;
    }

    /// Writes what start_write left; `handler(error_code)`.
    template <class Handler>
    void async_finish_write(Handler&& handler)
    {
        auto done = [h = std::forward<Handler>(handler)](boost::system::error_code ec, std::size_t) mutable { h(ec); };
        if (tls_)
            boost::asio::async_write(*tls_, frame_, std::move(done));
        else
            boost::asio::async_write(socket_, frame_, std::move(done));
    }

    /// Closes the socket; what is outstanding completes with operation_aborted.
    void close() noexcept
    {
        boost::system::error_code ignored;
        socket_.close(ignored);
    }

private:
    // Drops the first `n` bytes of the frame being written.
    void skip(std::size_t n) noexcept
    {
        for (auto& b : frame_) {
            const std::size_t k = std::min(n, b.size());
            b += k;
            n -= k;
        }
    }

    boost::asio::ip::tcp::socket socket_;
    std::optional<boost::asio::ssl::stream<boost::asio::ip::tcp::socket&>> tls_;
    boost::asio::ip::tcp::endpoint peer_;
    std::vector<char> buffer_;
    std::array<boost::asio::const_buffer, 3> frame_{};
};

} // namespace hl7::detail
