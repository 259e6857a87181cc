#include "core/connection_shared.hpp"

namespace hl7::detail {

connection_counters counter_block::snapshot() const noexcept
{
    constexpr auto r = std::memory_order_relaxed;
    return {sent.load(r),   acknowledged.load(r), rejected.load(r), timed_out.load(r),
            failed.load(r), reconnects.load(r),   queued.load(r),   discarded.load(r)};
}

void add(connection_counters& total, const connection_counters& more) noexcept
{
    total.sent += more.sent;
    total.acknowledged += more.acknowledged;
    total.rejected += more.rejected;
    total.timed_out += more.timed_out;
    total.failed += more.failed;
    total.reconnects += more.reconnects;
    total.queued += more.queued;
    total.discarded += more.discarded;
}

} // namespace hl7::detail
