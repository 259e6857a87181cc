#include "net/connection_impl.hpp"

#include <boost/asio/post.hpp>
#include <boost/outcome/try.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <mutex>

namespace hl7 {

namespace asio = boost::asio;

struct client::state {
    asio::any_io_executor ex;
    hl7::host host;
    connection_options defaults;

    struct member {
        std::weak_ptr<connection::impl> impl;
        std::shared_ptr<detail::counter_block> counters;
    };
    mutable std::mutex mutex;
    mutable std::vector<member> members;
    mutable connection_counters retired{}; // totals of connections that no longer exist

    // Folds the counters of connections that are gone into `retired`, so that a client
    // that opens connections for years does not grow. Call with the mutex held.
    void prune() const
    {
        std::erase_if(members, [this](const member& m) {
            if (!m.impl.expired())
                return false;
            detail::add(retired, m.counters->snapshot());
            return true;
        });
    }
};

client::client(std::shared_ptr<state> s) noexcept
    : state_(std::move(s))
{
}

client::client(client&&) noexcept = default;
client& client::operator=(client&&) noexcept = default;
client::~client() = default;

outcome::result<client> client::create(executor_type ex, client_options options)
{
    auto h = parse_host(options.host);
    if (!h)
        return h.error();
    auto s = std::make_shared<state>();
    s->ex = std::move(ex);
    s->host = std::move(h).value();
    s->defaults = std::move(options.defaults);
    return client(std::move(s));
}

outcome::result<connection> client::connect(int port) const
{
    return connect(port, state_->defaults);
}

outcome::result<connection> client::connect(int port, connection_options options) const
{
    if (port < 1 || port > 65535)
        return errc::invalid_port;
    std::shared_ptr<asio::ssl::context> tls;
    if (options.tls) {
        BOOST_OUTCOME_TRY(tls, detail::make_client_context(*options.tls));
    }
    auto counters = std::make_shared<detail::counter_block>();
    auto i = std::make_shared<connection::impl>(state_->ex, state_->host, static_cast<std::uint16_t>(port),
                                                std::move(options), counters, std::move(tls));
    {
        std::lock_guard lock(state_->mutex);
        state_->prune();
        state_->members.push_back({i, std::move(counters)});
    }
    i->begin();
    return connection(std::move(i));
}

void client::close_impl(const std::shared_ptr<state>& s, close_mode mode, asio::any_completion_handler<void()> handler)
{
    std::vector<std::shared_ptr<connection::impl>> live;
    {
        std::lock_guard lock(s->mutex);
        for (const auto& m : s->members)
            if (auto c = m.impl.lock())
                live.push_back(std::move(c));
    }
    // The last connection to finish closing completes the handler.
    struct join {
        join(asio::any_completion_handler<void()> h, asio::any_io_executor ex)
            : handler(std::move(h)), fallback(std::move(ex))
        {
        }
        join(const join&) = delete;
        ~join()
        {
            asio::post(fallback, std::move(handler));
        }
        asio::any_completion_handler<void()> handler;
        asio::any_io_executor fallback;
    };
    auto done = std::make_shared<join>(std::move(handler), s->ex);
    for (const auto& c : live)
        connection::close_impl(c, mode, asio::any_completion_handler<void()>([done] {}));
}

asio::awaitable<void> client::close(close_mode mode)
{
    co_await async_close(mode, asio::use_awaitable);
}

connection_counters client::counters() const
{
    std::lock_guard lock(state_->mutex);
    state_->prune();
    connection_counters total = state_->retired;
    for (const auto& m : state_->members)
        detail::add(total, m.counters->snapshot());
    return total;
}

const hl7::host& client::host() const noexcept
{
    return state_->host;
}

} // namespace hl7
