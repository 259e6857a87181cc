#include "core/server_shared.hpp"

#include <algorithm>
#include <utility>

namespace hl7 {

std::string_view to_string(server_limit limit) noexcept
{
    switch (limit) {
    case server_limit::allowed_sources: return "allowed_sources";
    case server_limit::max_connections: return "max_connections";
    case server_limit::max_per_source: return "max_per_source";
    case server_limit::allowed_client_names: return "allowed_client_names";
    case server_limit::max_handshakes: return "max_handshakes";
    case server_limit::max_buffered: return "max_buffered";
    case server_limit::max_segments: return "max_segments";
    case server_limit::max_fields: return "max_fields";
    case server_limit::max_bad_frames: return "max_bad_frames";
    case server_limit::idle_timeout: return "idle_timeout";
    case server_limit::frame_timeout: return "frame_timeout";
    case server_limit::write_timeout: return "write_timeout";
    case server_limit::handshake_timeout: return "handshake_timeout";
    }
    return "unknown";
}

} // namespace hl7

namespace hl7::detail {

namespace {
constexpr auto relaxed = std::memory_order_relaxed;
}

void server_stats::hit(server_limit limit) noexcept
{
    limits[static_cast<std::size_t>(limit)].fetch_add(1, relaxed);
}

void server_stats::add_handler_time(clock::duration d) noexcept
{
    const double seconds = std::chrono::duration<double>(d).count();
    const auto& bounds = server_histogram::bounds;
    const auto bucket = static_cast<std::size_t>(std::lower_bound(bounds.begin(), bounds.end(), seconds) - bounds.begin());
    handler_buckets[bucket].fetch_add(1, relaxed);
    handler_count.fetch_add(1, relaxed);
    handler_micros.fetch_add(
        static_cast<std::uint64_t>(std::max<std::int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count())),
        relaxed);
}

server_counters server_stats::snapshot() const noexcept
{
    server_counters c;
    c.connections = connections.load(relaxed);
    c.received = received.load(relaxed);
    c.replied = replied.load(relaxed);
    c.errors = errors.load(relaxed);
    c.open = open.load(relaxed);
    c.bad_frames = bad_frames.load(relaxed);
    c.acks_ignored = acks_ignored.load(relaxed);
    c.bytes_received = bytes_received.load(relaxed);
    c.bytes_sent = bytes_sent.load(relaxed);
    for (std::size_t i = 0; i < c.replies_by_code.size(); ++i)
        c.replies_by_code[i] = replies_by_code[i].load(relaxed);
    for (std::size_t i = 0; i < c.limits.size(); ++i)
        c.limits[i] = limits[i].load(relaxed);
    for (std::size_t i = 0; i < c.handler_time.buckets.size(); ++i)
        c.handler_time.buckets[i] = handler_buckets[i].load(relaxed);
    c.handler_time.count = handler_count.load(relaxed);
    c.handler_time.sum = std::chrono::microseconds(handler_micros.load(relaxed));
    return c;
}

bool byte_budget::take(std::size_t n) noexcept
{
    std::size_t used = used_.load(relaxed);
    do {
        if (limit_ != 0 && (used > limit_ || n > limit_ - used))
            return false;
    } while (!used_.compare_exchange_weak(used, used + n, relaxed));
    return true;
}

void byte_budget::give(std::size_t n) noexcept
{
    used_.fetch_sub(n, relaxed);
}

event_limiter::event_limiter(std::uint32_t burst, clock::duration interval) noexcept
    : burst_(burst), interval_(interval)
{
    for (bucket& b : buckets_)
        b.tokens = burst;
}

std::optional<std::uint64_t> event_limiter::admit(server_event::kind k, clock::time_point now)
{
    std::lock_guard lock(mutex_);
    bucket& b = buckets_[static_cast<std::size_t>(k)];
    if (b.tokens < burst_ && now > b.refilled) {
        // Whole intervals since the last refill, each worth a token; the rest carries over.
        const auto earned = (now - b.refilled) / interval_;
        if (earned > 0) {
            b.tokens = static_cast<std::uint32_t>(std::min<std::int64_t>(burst_, b.tokens + earned));
            b.refilled += earned * interval_;
        }
    }
    if (b.tokens == 0) {
        ++b.suppressed;
        return std::nullopt;
    }
    if (b.tokens == burst_)
        b.refilled = now; // a full bucket earns nothing: its clock starts with this token
    --b.tokens;
    return std::exchange(b.suppressed, 0);
}

std::vector<std::pair<server_event::kind, std::uint64_t>> event_limiter::take_suppressed()
{
    std::vector<std::pair<server_event::kind, std::uint64_t>> out;
    std::lock_guard lock(mutex_);
    for (std::size_t k = 0; k < buckets_.size(); ++k)
        if (const std::uint64_t n = std::exchange(buckets_[k].suppressed, 0))
            out.emplace_back(static_cast<server_event::kind>(k), n);
    return out;
}

} // namespace hl7::detail
