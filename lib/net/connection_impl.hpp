// The state behind a connection handle (see connection.cpp).
#pragma once

#include "core/connection_core.hpp"
#include "core/connection_shared.hpp"
#include "net/strand.hpp"
#include "net/session.hpp"
#include "net/tls.hpp"

#include <hl7/net/client.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>

#include <atomic>
#include <exception>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace hl7 {

struct connection::impl : std::enable_shared_from_this<connection::impl> {
    // What goes on the wire for one send: the message itself (no copy) or what the send
    // hook made of it.
    struct payload {
        message original;
        std::string hooked;
        std::string_view bytes() const noexcept { return hooked.empty() ? original.str() : std::string_view(hooked); }
    };
    struct pending_send {
        boost::asio::any_completion_handler<send_signature> handler;
        // The handler's executor, counting work so that it does not run out while the send
        // is pending; the handler completes on it.
        boost::asio::any_completion_executor executor;
        payload bytes;
    };

    impl(boost::asio::any_io_executor ex, hl7::host host, std::uint16_t port, connection_options options,
         std::shared_ptr<detail::counter_block> counters, std::shared_ptr<boost::asio::ssl::context> tls_context);

    /// Starts connecting unless the connection is lazy.
    void begin();
    /// Whether a call made now may step the core at once: on the strand, and not from inside
    /// a step (a receive hook that calls the connection).
    bool inline_here() const { return detail::running_in(strand_) && !stepping_; }
    /// Completes `handler`, whose associated executor is `ex`, with `args` (see connection.cpp).
    template <class Signature, class... Args>
    void complete(boost::asio::any_completion_handler<Signature> handler, boost::asio::any_completion_executor ex,
                  Args... args);
    /// Carries out every action the core has.
    void run();
    void connect(std::uint64_t link);
    /// The TCP connection of `link` is up: on to the TLS handshake, if any.
    void secure(std::uint64_t link);
    void established(std::uint64_t link);
    void read(std::uint64_t link);
    void write(std::uint64_t link, std::uint64_t id);
    void arm(detail::clock::time_point deadline);
    /// `initiating`: called inside async_send itself, where no handler may complete inline.
    void enqueue(std::uint64_t id, message msg, boost::asio::any_completion_handler<send_signature> handler,
                 bool initiating);
    void close(close_mode mode, boost::asio::any_completion_handler<void()> handler, bool initiating);

    const boost::asio::any_io_executor strand_; // made by detail::make_strand
    boost::asio::ip::tcp::resolver resolver_;
    // The transport of the latest link; a new one for each link, since the handlers of an
    // earlier one may still hold theirs.
    std::shared_ptr<detail::session> session_;
    boost::asio::steady_timer timer_;
    const hl7::host host_;
    const std::uint16_t port_;
    const connection_options options_;
    const std::shared_ptr<detail::counter_block> counters_;
    detail::status_block status_;
    const std::shared_ptr<boost::asio::ssl::context> tls_context_; // null: plaintext
    detail::connection_core core_;
    std::atomic<connection_state> state_{connection_state::idle};
    std::atomic<std::uint64_t> next_id_{1};
    // Sends not yet completed, by id. A node-based map, not a deque: erasing from the middle of
    // a deque move-assigns the entries behind, and move-assigning an any_completion_handler
    // recurses without end in Boost 1.81. Entries are only ever move-constructed.
    std::map<std::uint64_t, pending_send> pending_;
    std::vector<boost::asio::any_completion_handler<void()>> close_waiters_;
    payload writing_;                   // the bytes of the write in progress
    std::uint64_t writing_link_ = 0;    // the link they are being written on
    bool initiating_ = false;           // inside an async_send call: completions must be posted
    bool stepping_ = false;             // inside a core step that calls user code (received)
    std::uint64_t connecting_link_ = 0; // the link whose connect is in progress
    std::uint64_t open_link_ = 0;       // the link the open socket belongs to
};

} // namespace hl7
