// The Asio side of a connection: it owns the socket, the resolver and the one timer, and
// carries out what connection_core decides. All of it runs on the connection's strand.
#include "net/connection_impl.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <array>
#include <cstring>
#include <random>
#include <utility>

namespace hl7 {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {

std::uint64_t random_seed()
{
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

// Restores a flag on the way out, exceptions included.
class restore {
public:
    restore(bool& flag, bool value) : flag_(flag), old_(std::exchange(flag, value)) {}
    restore(const restore&) = delete;
    ~restore() { flag_ = old_; }

private:
    bool& flag_;
    bool old_;
};

// Why a payload cannot be framed or sent, or nothing.
boost::system::error_code check_payload(std::string_view bytes, std::size_t max_message)
{
    if (bytes.size() > max_message)
        return errc::message_too_large;
    if (std::memchr(bytes.data(), mllp::start_block, bytes.size()) ||
        std::memchr(bytes.data(), mllp::end_block, bytes.size()))
        return errc::block_byte_in_message;
    return {};
}

} // namespace

connection::impl::impl(asio::any_io_executor ex, hl7::host host, std::uint16_t port, connection_options options,
                       std::shared_ptr<detail::counter_block> counters,
                       std::shared_ptr<asio::ssl::context> tls_context)
    : strand_(detail::make_strand(ex)),
      resolver_(strand_),
      timer_(strand_),
      host_(std::move(host)),
      port_(port),
      options_(std::move(options)),
      counters_(std::move(counters)),
      tls_context_(std::move(tls_context)),
      core_(options_, *counters_, status_, random_seed())
{
}

// A handler completes on its associated executor (the strand when it has none). This runs
// on the strand, so dispatching inline is allowed, except inside the initiating call, where
// the handler must not run: then it is posted. Dispatching saves a trip through the
// scheduler per message, and is safe because no public entry point touches the state inline
// except send, which the core only lets enqueue. A dispatched handler goes straight to its
// own executor rather than through the strand, which would wrap it once more.
//
// The handler's cancellation slot is cleared on the handler's executor, where the application
// emits its cancellation signal, not here: a signal is not safe to use from two threads at
// once. A cancellation emitted in between finds the send gone and does nothing.
template <class Signature, class... Args>
void connection::impl::complete(asio::any_completion_handler<Signature> handler, asio::any_completion_executor ex,
                                Args... args)
{
    auto finish = [h = std::move(handler), ... args = std::move(args)]() mutable {
        h.get_cancellation_slot().clear();
        std::move(h)(std::move(args)...);
    };
    if (initiating_)
        asio::post(strand_, asio::bind_executor(std::move(ex), std::move(finish)));
    else
        asio::dispatch(asio::bind_executor(std::move(ex), std::move(finish)));
}

void connection::impl::begin()
{
    if (!options_.lazy)
        asio::post(strand_, [self = shared_from_this()] {
            self->core_.start(detail::clock::now());
            self->run();
        });
}

void connection::impl::run()
{
    // Stored first: a completion dispatched below may resume code that reads state().
    state_.store(core_.state(), std::memory_order_relaxed);
    // A handler run inline that throws must not keep the actions after it from being carried
    // out (other sends from completing): the first exception is kept and rethrown once they
    // are, from the strand, so that it still leaves io_context::run().
    std::exception_ptr thrown;
    auto guarded = [&thrown](auto&& f) {
        try {
            f();
        } catch (...) {
            if (!thrown)
                thrown = std::current_exception();
        }
    };
    detail::action a;
    while (core_.next(a)) {
        using kind = detail::action::kind;
        switch (a.what()) {
        case kind::connect: connect(a.link()); break;
        case kind::write: write(a.link(), a.id()); break;
        case kind::close_socket:
            if (a.link() == open_link_ || a.link() == connecting_link_) {
                resolver_.cancel();
                session_->close();
                open_link_ = connecting_link_ = 0;
            }
            break;
        case kind::complete: {
            auto it = pending_.find(a.id());
            if (it == pending_.end())
                break;
            auto handler = std::move(it->second.handler);
            auto ex = std::move(it->second.executor);
            pending_.erase(it);
            guarded([&] { complete(std::move(handler), std::move(ex), a.error(), a.take_ack()); });
            break;
        }
        case kind::notify:
            // An observer is for logs and metrics: what it throws is contained.
            try {
                options_.observer(a.event().view());
            } catch (...) {
            }
            break;
        case kind::arm_timer: arm(a.deadline()); break;
        case kind::closed:
            // Taken out first: a waiter resumed inline may close again and reach here anew.
            for (auto& waiter : std::exchange(close_waiters_, {})) {
                auto ex = asio::get_associated_executor(waiter, strand_);
                guarded([&] { complete(std::move(waiter), std::move(ex)); });
            }
            break;
        }
    }
    if (thrown)
        asio::post(strand_, [thrown] { std::rethrow_exception(thrown); });
}

void connection::impl::connect(std::uint64_t link)
{
    connecting_link_ = link;
    // ACKs are small; a larger reply is gathered by the decoder.
    session_ = std::make_shared<detail::session>(tcp::socket(strand_), tls_context_.get(), 4096);
    auto self = shared_from_this();
    auto on_connected = [self, link, s = session_](boost::system::error_code ec, const tcp::endpoint&) {
        if (ec)
            self->core_.connect_failed(link, ec, detail::clock::now());
        else if (link == self->connecting_link_)
            self->secure(link);
        self->run();
    };
    if (host_.kind != host_kind::name) {
        const std::array<tcp::endpoint, 1> target{tcp::endpoint(asio::ip::make_address(host_.text), port_)};
        asio::async_connect(session_->socket(), target, std::move(on_connected));
        return;
    }
    resolver_.async_resolve(
        host_.text, std::to_string(port_),
        [self, link, on_connected = std::move(on_connected)](boost::system::error_code ec,
                                                             tcp::resolver::results_type results) mutable {
            if (link != self->connecting_link_) {
                self->run(); // the attempt was abandoned (timeout or close)
                return;
            }
            if (ec) {
                self->core_.connect_failed(link, errc::resolve_failed, detail::clock::now());
                self->run();
                return;
            }
            asio::async_connect(self->session_->socket(), results, std::move(on_connected));
        });
}

void connection::impl::secure(std::uint64_t link)
{
    session_->connected();
    if (!session_->secure()) {
        established(link);
        return;
    }
    detail::prepare_client(session_->native_handle(), *options_.tls, host_);
    core_.handshaking(link, detail::clock::now());
    session_->async_handshake(asio::ssl::stream_base::client,
                              [self = shared_from_this(), link, s = session_](boost::system::error_code ec) {
                                  if (link == self->connecting_link_) {
                                      if (ec)
                                          self->core_.connect_failed(link, ec, detail::clock::now());
                                      else
                                          self->established(link);
                                  }
                                  self->run();
                              });
}

void connection::impl::established(std::uint64_t link)
{
    connecting_link_ = 0;
    open_link_ = link;
    core_.connected(link, session_->peer(), detail::clock::now());
    if (open_link_ == link)
        read(link);
}

void connection::impl::read(std::uint64_t link)
{
    session_->async_read_some([self = shared_from_this(), link, s = session_](boost::system::error_code ec,
                                                                               std::string_view bytes) {
        if (ec) {
            self->core_.read_failed(link, ec, detail::clock::now());
        } else {
            // The receive hook runs inside this step: a call it makes to the connection waits
            // for the step to end (see inline_here).
            const restore in_step(self->stepping_, true);
            self->core_.received(link, bytes, detail::clock::now());
        }
        // Completions first: a sender resumed by them writes its next message before this
        // read is issued again, which would only find nothing to read yet.
        self->run();
        if (!ec && self->open_link_ == link)
            self->read(link);
    });
}

void connection::impl::write(std::uint64_t link, std::uint64_t id)
{
    // The bytes move out of the pending entry: a terminal cancellation may complete (and
    // erase) the send while the write is still going on. The core writes only sends that are
    // pending.
    writing_ = std::move(pending_.at(id).bytes);
    writing_link_ = link;
    if (session_->start_write(writing_.bytes())) {
        writing_ = {};
        core_.written(link, {}, detail::clock::now());
        return;
    }
    session_->async_finish_write([self = shared_from_this(), link, s = session_](boost::system::error_code ec) {
        if (self->writing_link_ == link) // not a write of a later link, whose bytes these are not
            self->writing_ = {};
        self->core_.written(link, ec, detail::clock::now());
        self->run();
    });
}

void connection::impl::arm(detail::clock::time_point deadline)
{
    if (deadline == detail::clock::time_point::max()) {
        timer_.cancel();
        return;
    }
    timer_.expires_at(deadline);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
        if (ec)
            return; // re-armed or cancelled
        self->core_.timer_fired(detail::clock::now());
        self->run();
    });
}

void connection::impl::enqueue(std::uint64_t id, message msg, asio::any_completion_handler<send_signature> handler,
                               bool initiating)
{
    const restore in_call(initiating_, initiating);
    // Failures found here come before any I/O; the message is not sent.
    auto fail = [&](boost::system::error_code ec) {
        counters_->failed.fetch_add(1, std::memory_order_relaxed);
        auto ex = asio::get_associated_executor(handler, strand_);
        complete(std::move(handler), std::move(ex), ec, hl7::ack{});
    };
    const std::string_view control_id = msg.control_id();
    if (control_id.empty())
        return fail(errc::missing_control_id);
    std::string id_text(control_id);
    payload p;
    if (options_.send_hook) {
        try {
            p.hooked = options_.send_hook(msg.str());
        } catch (...) {
            return fail(errc::hook_failed);
        }
    } else {
        p.original = std::move(msg);
    }
    if (const auto ec = check_payload(p.bytes(), options_.max_message))
        return fail(ec);
    auto ex = asio::prefer(asio::get_associated_executor(handler, strand_), asio::execution::outstanding_work.tracked);
    pending_.emplace(id, pending_send{std::move(handler), std::move(ex), std::move(p)});
    core_.send(id, std::move(id_text), detail::clock::now());
    run();
}

void connection::impl::close(close_mode mode, asio::any_completion_handler<void()> handler, bool initiating)
{
    if (handler)
        close_waiters_.push_back(std::move(handler));
    const restore in_call(initiating_, initiating);
    core_.close(mode, detail::clock::now());
    run();
}

// ---------------------------------------------------------------------------------------
// connection

connection::connection(std::shared_ptr<impl> i) noexcept
    : impl_(std::move(i))
{
}

connection::connection(connection&&) noexcept = default;

connection& connection::operator=(connection&& other) noexcept
{
    if (this != &other) {
        if (impl_)
            close_impl(impl_, close_mode::graceful, {});
        impl_ = std::move(other.impl_);
    }
    return *this;
}

connection::~connection()
{
    if (impl_)
        close_impl(impl_, close_mode::graceful, {});
}

void connection::send_impl(const std::shared_ptr<impl>& i, message msg, asio::any_completion_handler<send_signature> handler)
{
    const std::uint64_t id = i->next_id_.fetch_add(1, std::memory_order_relaxed);
    // The slot is assigned here, in the initiating context, where the application also
    // emits cancellation; the work itself is handed to the strand.
    auto slot = handler.get_cancellation_slot();
    if (slot.is_connected()) {
        slot.assign([w = std::weak_ptr<impl>(i), id](asio::cancellation_type type) {
            if (auto self = w.lock())
                asio::post(self->strand_, [self, id, type] {
                    self->core_.cancel(id, (type & asio::cancellation_type::terminal) != asio::cancellation_type::none,
                                       detail::clock::now());
                    self->run();
                });
        });
    }
    // At once when the caller already runs on the strand (a sender resumed by the previous
    // ACK, typically): the next message then goes out without a trip through the scheduler.
    // From anywhere else it is posted (a strand never runs work inline for a caller outside).
    if (i->inline_here()) {
        i->enqueue(id, std::move(msg), std::move(handler), true);
        return;
    }
    asio::post(i->strand_, [i, id, msg = std::move(msg), h = std::move(handler)]() mutable {
        i->enqueue(id, std::move(msg), std::move(h), false);
    });
}

void connection::close_impl(const std::shared_ptr<impl>& i, close_mode mode, asio::any_completion_handler<void()> handler)
{
    // Like sends, so that calls made on the strand keep their order.
    if (i->inline_here()) {
        i->close(mode, std::move(handler), true);
        return;
    }
    asio::post(i->strand_, [i, mode, h = std::move(handler)]() mutable { i->close(mode, std::move(h), false); });
}

asio::awaitable<outcome::result<hl7::ack>> connection::send(message msg)
{
    // Without a coroutine frame of its own: the awaitable completes straight from the send's
    // handler, which makes the result of the error and the ACK. The awaiting coroutine's
    // executor and cancellation slot stay those of the send.
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(outcome::result<hl7::ack>)>(
        [i = impl_](auto handler, message m) {
            auto slot = asio::get_associated_cancellation_slot(handler);
            auto ex = asio::get_associated_executor(handler);
            auto to_result = [h = std::move(handler)](boost::system::error_code ec, hl7::ack ack) mutable {
                std::move(h)(ec ? outcome::result<hl7::ack>(ec) : outcome::result<hl7::ack>(std::move(ack)));
            };
            send_impl(i, std::move(m), asio::bind_cancellation_slot(slot, asio::bind_executor(ex, std::move(to_result))));
        },
        asio::use_awaitable, std::move(msg));
}

asio::awaitable<void> connection::close(close_mode mode)
{
    co_await async_close(mode, asio::use_awaitable);
}

void connection::start()
{
    auto go = [i = impl_] {
        i->core_.start(detail::clock::now());
        i->run();
    };
    if (impl_->inline_here())
        go();
    else
        asio::post(impl_->strand_, std::move(go));
}

connection_state connection::state() const noexcept
{
    return impl_->state_.load(std::memory_order_relaxed);
}

connection_counters connection::counters() const noexcept
{
    return impl_->counters_->snapshot();
}

connection_diagnostics connection::diagnostics() const
{
    return impl_->status_.diagnostics();
}

std::optional<tcp::endpoint> connection::remote_endpoint() const
{
    return impl_->status_.remote();
}

std::uint16_t connection::port() const noexcept
{
    return impl_->port_;
}

connection::executor_type connection::get_executor() const noexcept
{
    return impl_->strand_;
}

} // namespace hl7
