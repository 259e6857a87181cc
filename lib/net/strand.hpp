// The strands that connections and server sessions run on.
#pragma once

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

namespace hl7::detail {

/// A strand over `ex`. Over the io_context's own executor, when that is what the library was
/// given, the strand fits in any_io_executor's inline storage; over the type-erased executor
/// it would be allocated again each time Asio counts work on it, for every read and write.
inline boost::asio::any_io_executor make_strand(const boost::asio::any_io_executor& ex)
{
    if (const auto* io = ex.target<boost::asio::io_context::executor_type>())
        return boost::asio::make_strand(*io);
    return boost::asio::make_strand(ex);
}

/// Whether the calling thread is running inside `strand`, one made by make_strand.
inline bool running_in(const boost::asio::any_io_executor& strand)
{
    if (const auto* s = strand.target<boost::asio::strand<boost::asio::io_context::executor_type>>())
        return s->running_in_this_thread();
    return strand.target<boost::asio::strand<boost::asio::any_io_executor>>()->running_in_this_thread();
}

} // namespace hl7::detail
