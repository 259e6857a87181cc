// The library's server on a thread of its own, for the tests that run the `hl7` tool against
// it: it answers AA to every message (after a pause, if asked, so that a delivery lasts long
// enough to be interrupted) and records every arrival, safely read from the test's thread.
#pragma once

#include <hl7/model/ack.hpp>
#include <hl7/net/server.hpp>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace hl7::test {

struct arrival {
    std::string control_id;
    std::uint16_t port = 0; // the sender's port: tells its connections apart
};

class recording_server {
public:
    explicit recording_server(std::chrono::milliseconds pause = {}) : log_(std::make_shared<shared>())
    {
        namespace asio = boost::asio;
        hl7::server_options o{.host = "127.0.0.1", .port = 0};
        o.handler = [log = log_, pause](const hl7::message& m,
                                        const hl7::peer_info& from) -> asio::awaitable<hl7::outcome::result<hl7::message>> {
            {
                std::lock_guard lock(log->mutex);
                log->arrivals.push_back({std::string(m.control_id()), from.address.port()});
            }
            if (pause.count() > 0) {
                asio::steady_timer timer(co_await asio::this_coro::executor, pause);
                auto waiting = timer.async_wait(asio::use_awaitable);
                co_await std::move(waiting);
            }
            co_return hl7::make_ack(m, hl7::verdict::accept);
        };
        server_.emplace(hl7::server::create(ctx_.get_executor(), std::move(o)).value());
        thread_ = std::thread([this] { ctx_.run(); });
    }
    recording_server(const recording_server&) = delete;
    recording_server& operator=(const recording_server&) = delete;
    ~recording_server()
    {
        ctx_.stop();
        thread_.join();
    }

    std::string port() const { return std::to_string(server_->local_endpoint().port()); }

    std::vector<arrival> arrivals() const
    {
        std::lock_guard lock(log_->mutex);
        return log_->arrivals;
    }

    /// The MSH-10 of every message, in the order they came.
    std::vector<std::string> received() const
    {
        std::vector<std::string> ids;
        for (auto& a : arrivals())
            ids.push_back(a.control_id);
        return ids;
    }

    std::size_t count() const
    {
        std::lock_guard lock(log_->mutex);
        return log_->arrivals.size();
    }

    /// Waits until `n` messages arrived, at most `limit`; false if they did not.
    bool wait_for(std::size_t n, std::chrono::seconds limit) const
    {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        while (count() < n) {
            if (std::chrono::steady_clock::now() > deadline)
                return false;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return true;
    }

private:
    struct shared {
        std::mutex mutex;
        std::vector<arrival> arrivals;
    };
    std::shared_ptr<shared> log_;
    boost::asio::io_context ctx_;
    std::optional<hl7::server> server_;
    std::thread thread_;
};

} // namespace hl7::test
