// The outbox's Asio layer: runs that deliver destinations lane by lane, each lane's core
// stepped by what its store and its connection report, and the waiters of the outcome stream.
// All of it lives on one strand; the store and the connections complete onto it.
#include <hl7/outbox/outbox.hpp>

#include "core/lane_core.hpp"
#include "outbox/sqlite_store.hpp"
#include "outbox/store.hpp"
#ifdef HL7_OUTBOX_POSTGRESQL
#include "outbox/pg_store.hpp"
#endif

#include <hl7/net/host.hpp>

#include <boost/asio/append.hpp>
#include <boost/asio/associated_cancellation_slot.hpp>
#include <boost/asio/associated_executor.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <list>
#include <map>
#include <random>
#include <set>

#include <unistd.h>

namespace hl7 {

namespace asio = boost::asio;
using error_code = boost::system::error_code;

// --- values ----------------------------------------------------------------------------------

outbox_location parse_outbox_location(std::string_view text)
{
    if (text.starts_with("postgresql://") || text.starts_with("postgres://"))
        return {outbox_location::kind::postgresql, std::string(text)};
    return {outbox_location::kind::sqlite, std::string(text)};
}

std::string_view to_string(outbox_state s) noexcept
{
    switch (s) {
    case outbox_state::queued: return "queued";
    case outbox_state::written: return "written";
    case outbox_state::acknowledged: return "acknowledged";
    case outbox_state::rejected: return "rejected";
    case outbox_state::failed: return "failed";
    }
    return "unknown";
}

std::optional<outbox_state> parse_outbox_state(std::string_view text) noexcept
{
    for (outbox_state s : {outbox_state::queued, outbox_state::written, outbox_state::acknowledged,
                           outbox_state::rejected, outbox_state::failed})
        if (to_string(s) == text)
            return s;
    return std::nullopt;
}

std::string to_string(const outbox_destination& d)
{
    std::string_view host = d.host;
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
        host = host.substr(1, host.size() - 2);
    const bool v6 = host.find(':') != std::string_view::npos;
    std::string out;
    out.reserve(host.size() + 8);
    if (v6)
        out += '[';
    out.append(host);
    if (v6)
        out += ']';
    out += ':';
    out += std::to_string(d.port);
    return out;
}

outcome::result<std::uint32_t> outbox_lane(const message& msg, const enqueue_options& options)
{
    if (options.lanes < 1 || options.lanes > 1024)
        return error_code(outbox_errc::invalid_lanes);
    if (options.partition_key.empty())
        return 0u;
    auto v = msg.get(options.partition_key);
    if (!v)
        return v.error();
    // FNV-1a, 64 bits: the same lane for the same bytes in every process and every version.
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : v.value().raw()) {
        h ^= c;
        h *= 0x100000001b3ull;
    }
    return static_cast<std::uint32_t>(h % options.lanes);
}

// --- the shared state --------------------------------------------------------------------------

namespace {

template <class Signature>
using handler = asio::any_completion_handler<Signature>;

// Completes `h` with `args` through its associated executor, from a context that is not the
// initiating call.
template <class Signature, class... Args>
void complete(handler<Signature> h, const asio::any_io_executor& fallback, Args&&... args)
{
    auto ex = asio::get_associated_executor(h, fallback);
    asio::dispatch(asio::bind_executor(std::move(ex), asio::append(std::move(h), std::forward<Args>(args)...)));
}

// Completes `h` with `args` from inside the initiating call: posted, never inline.
template <class Signature, class... Args>
void complete_later(handler<Signature> h, const asio::any_io_executor& fallback, Args&&... args)
{
    asio::post(fallback, asio::append(std::move(h), std::forward<Args>(args)...));
}

// A store handler that runs on `h`'s executor and hands the store's result to `f` with `h`.
template <class Signature, class F>
auto then(handler<Signature> h, const asio::any_io_executor& fallback, F f)
{
    auto ex = asio::get_associated_executor(h, fallback);
    return asio::bind_executor(ex, [h = std::move(h), f = std::move(f)](auto&&... results) mutable {
        f(std::move(h), std::forward<decltype(results)>(results)...);
    });
}

void tell(const std::function<void(const outbox_event&)>& observer, const outbox_event& e)
{
    if (!observer)
        return;
    try {
        observer(e);
    } catch (...) {
        // An observer that throws changes nothing delivered or stored.
    }
}

std::string make_owner()
{
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0)
        host[0] = '\0';
    std::random_device rd;
    char tail[32];
    std::snprintf(tail, sizeof tail, ":%ld:%08x", static_cast<long>(::getpid()), rd());
    return std::string(host[0] != '\0' ? host : "localhost") + tail;
}

std::uint64_t random_seed()
{
    std::random_device rd;
    return (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
}

class run_state;

struct outcome_waiter {
    std::uint64_t after = 0;
    std::optional<handler<outbox::record_signature>> h;
    bool querying = false;
    bool again = false; // woken while querying: the answer may be stale
};

} // namespace

struct outbox::impl : std::enable_shared_from_this<outbox::impl> {
    impl(asio::any_io_executor executor, outbox_options o, std::unique_ptr<detail::store> s, bool shared_store)
        : ex(std::move(executor)), strand(asio::make_strand(ex)), options(std::move(o)), store(std::move(s)),
          owner(make_owner()), shared(shared_store), poll(strand)
    {
    }

    void wake(const std::string& destination, std::uint32_t lane);
    void changed(const detail::store_change& c);
    void wake_waiters();
    void query(const std::shared_ptr<outcome_waiter>& w);
    void finish_waiter(const std::shared_ptr<outcome_waiter>& w, error_code ec, outbox_record r = {});
    void arm_poll();
    void run_finished(const std::string& destination);
    void finish_close();

    asio::any_io_executor ex;
    asio::strand<asio::any_io_executor> strand;
    outbox_options options;
    std::unique_ptr<detail::store> store;
    const std::string owner;
    const bool shared; // several processes deliver from the store (PostgreSQL)
    // On the strand:
    std::map<std::string, std::shared_ptr<run_state>> runs;
    std::list<std::shared_ptr<outcome_waiter>> waiters;
    asio::steady_timer poll; // for waiters: outcomes recorded by other processes
    bool polling = false;
    bool closing = false;
    bool store_closed = false;
    std::list<handler<void()>> close_waiters;
};

namespace {

// One lane of a run: its core, its connection, its lease.
class lane_runner : public std::enable_shared_from_this<lane_runner> {
public:
    lane_runner(std::shared_ptr<outbox::impl> box, std::shared_ptr<run_state> run, std::string destination,
                std::uint32_t lane, const outbox_run_options& options)
        : box_(std::move(box)), run_(std::move(run)), destination_(std::move(destination)), lane_(lane),
          core_(settings(*box_, options)), timer_(box_->strand)
    {
    }

    void start()
    {
        core_.start(outbox_clock::now());
        step();
    }
    void wake()
    {
        core_.wake(outbox_clock::now());
        step();
    }
    void stop()
    {
        core_.stop(outbox_clock::now());
        step();
    }

private:
    static detail::lane_core::settings settings(const outbox::impl& box, const outbox_run_options& o)
    {
        return {.window = std::max<std::size_t>(o.connection.max_in_flight, 1),
                .batch = 32,
                .renew_every = std::max<outbox_clock::duration>(box.options.lease_ttl / 3, std::chrono::milliseconds(1)),
                .lease_ttl = box.shared ? outbox_clock::duration(box.options.lease_ttl) : outbox_clock::duration::zero(),
                .retry = o.retry,
                .seed = random_seed()};
    }

    template <class F>
    auto on_strand(F f)
    {
        return asio::bind_executor(box_->strand, [self = shared_from_this(), f = std::move(f)](auto&&... args) mutable {
            f(*self, std::forward<decltype(args)>(args)...);
            self->step();
        });
    }

    void step();
    void send(std::int64_t id);
    void arm(outbox_clock::time_point deadline);
    void notify(const detail::lane_note& n);
    void finish(error_code ec);

    std::shared_ptr<outbox::impl> box_;
    std::shared_ptr<run_state> run_;
    std::string destination_;
    std::uint32_t lane_;
    std::optional<connection> conn_; // once the lease is first held: no connection for a lane held elsewhere
    detail::lane_core core_;
    detail::lease lease_{};
    asio::steady_timer timer_;
    std::uint64_t timer_generation_ = 0;
    // One signal per send, shared with the emission posted to the connection's strand, where
    // the connection clears the slot when the send completes.
    std::map<std::int64_t, std::shared_ptr<asio::cancellation_signal>> signals_;
};

// One async_run: the lanes of a destination.
class run_state : public std::enable_shared_from_this<run_state> {
public:
    run_state(std::shared_ptr<outbox::impl> box, outbox_destination to, std::string key, outbox_run_options options,
              client c, handler<outbox::run_signature> h)
        : box_(std::move(box)), to_(std::move(to)), key_(std::move(key)), options_(std::move(options)),
          client_(std::move(c)), poll_(box_->strand), random_(random_seed()), handler_(std::move(h))
    {
    }

    const std::string& key() const { return key_; }

    void start()
    {
        box_->store->begin_delivery(asio::bind_executor(box_->strand, [self = shared_from_this()](error_code ec) {
            if (ec) {
                self->fail(ec);
                self->maybe_finish();
                return;
            }
            self->delivering_ = true;
            if (self->stopping_) {
                self->maybe_finish();
                return;
            }
            self->discover();
        }));
    }

    /// Stops every lane; completes with `ec` (operation_aborted, closed) unless an error came first.
    void stop(error_code ec)
    {
        if (!error_ && !done_)
            error_ = ec;
        stop_lanes();
    }

    void wake(std::uint32_t lane)
    {
        if (stopping_)
            return;
        if (auto it = lanes_.find(lane); it != lanes_.end())
            it->second->wake();
        else if (!box_->shared)
            add_lane(lane);
        else if (!known_.contains(lane))
            look_again(); // a new lane: discovery decides whether it is this instance's to take
        // A known lane another instance holds is its holder's; a takeover waits for the poll.
    }

    /// Dead letters were queued again: every lane looks, and lanes not running yet start.
    void wake_all()
    {
        if (stopping_)
            return;
        for (auto& [lane, runner] : lanes_)
            runner->wake();
        look_again();
    }

    void lane_drained(std::uint32_t lane, bool drained)
    {
        if (drained)
            drained_.insert(lane);
        else
            drained_.erase(lane);
        if (options_.until_empty && !stopping_ && !listing_ && drained_.size() == lanes_.size())
            discover(); // perhaps nothing is pending anywhere: done, without error
    }

    void lane_stopped(std::uint32_t lane, error_code ec)
    {
        lanes_.erase(lane);
        drained_.erase(lane);
        // Another instance holds the lane, or the store was out of reach: the run goes on and
        // tries the lane again at a later poll.
        const bool again = ec == outbox_errc::lease_held || ec == outbox_errc::lease_lost ||
                           ec == outbox_errc::store_unavailable;
        if (ec && !again)
            fail(ec);
        maybe_finish();
    }

    /// A connection for a lane whose lease was just taken.
    outcome::result<connection> connect_lane() const { return client_.connect(to_.port, options_.connection); }

    void set_slot(asio::cancellation_slot slot)
    {
        slot.assign([w = weak_from_this(), strand = box_->strand](asio::cancellation_type) {
            asio::post(strand, [w] {
                if (auto self = w.lock())
                    self->stop(asio::error::operation_aborted);
            });
        });
    }

private:
    // Discovery now, or once the one under way is over (it may have listed the lanes before
    // the change that calls for another look).
    void look_again()
    {
        if (listing_)
            again_ = true;
        else
            discover();
    }

    // Says this instance delivers, then looks at the lanes stored for the destination and
    // starts those it should run: all of them on a store one process delivers, its share on a
    // shared one (ceil(lanes / instances)), giving surplus lanes back as other instances
    // arrive. Lanes it does not run are tried in a random order, so that instances starting
    // together do not all ask for the same lanes first.
    void discover()
    {
        listing_ = true;
        box_->store->heartbeat(
            box_->owner, box_->options.lease_ttl,
            asio::bind_executor(box_->strand, [self = shared_from_this()](error_code ec, std::size_t instances) {
                if (self->discovery_goes_on(ec, false))
                    self->list_lanes(std::max<std::size_t>(1, instances));
            }));
    }

    void list_lanes(std::size_t instances)
    {
        box_->store->lanes(key_, asio::bind_executor(box_->strand, [self = shared_from_this(), instances](
                                                                    error_code ec, std::vector<std::uint32_t> lanes) {
            if (!self->discovery_goes_on(ec, true))
                return;
            self->known_ = std::set<std::uint32_t>(lanes.begin(), lanes.end());
            self->balance(lanes, instances);
            if (std::exchange(self->again_, false)) {
                self->discover();
                return;
            }
            if (self->options_.until_empty && self->drained_.size() == self->lanes_.size()) {
                self->check_empty();
                return;
            }
            self->arm_poll();
        }));
    }

    void balance(std::vector<std::uint32_t> lanes, std::size_t instances)
    {
        const std::size_t share = box_->shared ? (lanes.size() + instances - 1) / instances : lanes.size();
        std::erase_if(lanes, [&](std::uint32_t lane) { return lanes_.contains(lane); });
        if (box_->shared)
            std::shuffle(lanes.begin(), lanes.end(), random_);
        for (std::uint32_t lane : lanes) {
            if (lanes_.size() >= share || stopping_)
                break;
            add_lane(lane);
        }
        if (lanes_.size() > share) {
            // Drained lanes first: giving one back then costs nothing.
            std::vector<std::shared_ptr<lane_runner>> surplus;
            for (auto& [lane, runner] : lanes_)
                if (drained_.contains(lane))
                    surplus.push_back(runner);
            for (auto& [lane, runner] : lanes_)
                if (!drained_.contains(lane))
                    surplus.push_back(runner);
            surplus.resize(lanes_.size() - share);
            for (auto& r : surplus)
                r->stop();
        }
    }

    // Every lane this run holds is drained: done if nothing is pending in the lanes it does
    // not hold either.
    void check_empty()
    {
        listing_ = true;
        box_->store->select({.destination = key_, .states = {outbox_state::queued, outbox_state::written}, .limit = 1},
                            asio::bind_executor(box_->strand, [self = shared_from_this()](
                                                                  error_code ec, std::vector<outbox_record> pending) {
                                if (!self->discovery_goes_on(ec, true))
                                    return;
                                if (pending.empty() && self->drained_.size() == self->lanes_.size()) {
                                    self->stop_lanes();
                                    return;
                                }
                                self->arm_poll();
                            }));
    }

    // A shared store out of reach is waited out (the next poll tries again); any other error
    // stops the run.
    // Where a step of discovery lands: true when the run goes on with it; a stopping run
    // finishes instead, a store error waits for the next poll. `last`: listing ends here.
    bool discovery_goes_on(error_code ec, bool last)
    {
        if (last || stopping_ || ec)
            listing_ = false;
        if (stopping_) {
            maybe_finish();
            return false;
        }
        if (ec) {
            poll_failed(ec);
            return false;
        }
        return true;
    }

    void poll_failed(error_code ec)
    {
        if (ec == outbox_errc::store_unavailable)
            arm_poll();
        else
            fail(ec);
    }

    // What other processes stored shows up here: new lanes, and new messages in known ones.
    void arm_poll()
    {
        poll_.expires_after(box_->options.poll_interval);
        poll_.async_wait(asio::bind_executor(box_->strand, [self = shared_from_this()](error_code ec) {
            if (ec || self->stopping_ || self->listing_)
                return;
            for (auto& [lane, runner] : self->lanes_)
                runner->wake();
            self->discover();
        }));
    }

    void add_lane(std::uint32_t lane)
    {
        auto runner = std::make_shared<lane_runner>(box_, shared_from_this(), key_, lane, options_);
        lanes_.emplace(lane, runner);
        runner->start();
    }

    void fail(error_code ec)
    {
        if (!error_)
            error_ = ec;
        stop_lanes();
    }

    void stop_lanes()
    {
        stopping_ = true;
        poll_.cancel();
        // Copied: a lane may stop at once and leave the map.
        std::vector<std::shared_ptr<lane_runner>> running;
        for (auto& [lane, runner] : lanes_)
            running.push_back(runner);
        for (auto& r : running)
            r->stop();
        maybe_finish();
    }

    void maybe_finish()
    {
        if (done_ || !stopping_ || !lanes_.empty() || listing_)
            return;
        done_ = true;
        auto finish = [self = shared_from_this()](error_code) {
            self->box_->run_finished(self->key_);
            auto h = std::move(*self->handler_);
            self->handler_.reset();
            h.get_cancellation_slot().clear();
            complete(std::move(h), self->box_->ex, self->error_);
        };
        if (!delivering_) {
            finish({});
            return;
        }
        // The other instances need not wait for this one's heartbeat to expire to take its share.
        box_->store->heartbeat(box_->owner, {},
                               asio::bind_executor(box_->strand, [self = shared_from_this(), finish](error_code, std::size_t) {
                                   self->box_->store->end_delivery(asio::bind_executor(self->box_->strand, finish));
                               }));
    }

    std::shared_ptr<outbox::impl> box_;
    outbox_destination to_;
    std::string key_;
    outbox_run_options options_;
    client client_;
    asio::steady_timer poll_;
    std::mt19937_64 random_;
    std::optional<handler<outbox::run_signature>> handler_;
    std::map<std::uint32_t, std::shared_ptr<lane_runner>> lanes_;
    std::set<std::uint32_t> drained_;
    std::set<std::uint32_t> known_; // the lanes the last discovery found
    error_code error_{};
    bool delivering_ = false;
    bool listing_ = false;
    bool again_ = false; // look_again while listing
    bool stopping_ = false;
    bool done_ = false;
};

void lane_runner::step()
{
    detail::lane_core::action a;
    while (core_.next(a)) {
        using kind = detail::lane_core::action::kind;
        switch (a.what) {
        case kind::claim:
            box_->store->claim({destination_, lane_}, box_->owner, box_->options.lease_ttl, outbox_clock::now(),
                               on_strand([first = lease_.token == 0](lane_runner& self, error_code ec, detail::lease l) {
                                   if (!ec) {
                                       // A renewal that comes back with another token: the lease
                                       // changed hands meanwhile, so what this lane holds is stale.
                                       const bool changed = !first && l.token != self.lease_.token;
                                       self.lease_ = std::move(l);
                                       if (changed)
                                           ec = outbox_errc::lease_lost;
                                   }
                                   if (!ec) {
                                       if (!self.conn_) {
                                           auto made = self.run_->connect_lane();
                                           if (made)
                                               self.conn_.emplace(std::move(made).value());
                                           else
                                               ec = made.error(); // finish() gives the lease back
                                       }
                                   }
                                   if (!ec) {
                                       if (first)
                                           tell(self.box_->options.observer,
                                                {.what = outbox_event::kind::lane_started,
                                                 .destination = self.destination_,
                                                 .lane = self.lane_,
                                                 .token = self.lease_.token});
                                   }
                                   self.core_.claimed(ec, outbox_clock::now());
                               }));
            break;
        case kind::fetch:
            box_->store->select({.destination = destination_,
                                 .lane = lane_,
                                 .states = {outbox_state::queued, outbox_state::written},
                                 .limit = a.limit},
                                on_strand([](lane_runner& self, error_code ec, std::vector<outbox_record> records) {
                                    self.core_.fetched(ec, std::move(records), outbox_clock::now());
                                }));
            break;
        case kind::record:
            box_->store->record(lease_, std::move(a.changes), on_strand([](lane_runner& self, error_code ec) {
                                    self.core_.recorded(ec, outbox_clock::now());
                                }));
            break;
        case kind::send: send(a.id); break;
        case kind::cancel:
            if (auto it = signals_.find(a.id); it != signals_.end())
                asio::post(conn_->get_executor(),
                           [s = it->second] { s->emit(asio::cancellation_type::partial); });
            break;
        case kind::arm_timer: arm(a.deadline); break;
        case kind::notify: notify(a.note); break;
        case kind::drained: run_->lane_drained(lane_, true); break;
        case kind::busy: run_->lane_drained(lane_, false); break;
        case kind::stopped: finish(a.error); break;
        }
    }
}

void lane_runner::send(std::int64_t id)
{
    auto msg = message::parse(core_.record(id).message);
    if (!msg) {
        asio::post(box_->strand, [self = shared_from_this(), id, ec = msg.error()] {
            self->core_.sent(id, ec, {}, outbox_clock::now());
            self->step();
        });
        return;
    }
    if (conn_->state() == connection_state::failed)
        conn_->start(); // it gave up on an earlier attempt; the retry policy's delay has passed
    auto signal = std::make_shared<asio::cancellation_signal>();
    auto slot = signal->slot();
    signals_.emplace(id, std::move(signal));
    conn_->async_send(std::move(msg).value(),
                     asio::bind_cancellation_slot(slot, on_strand([id](lane_runner& self, error_code ec, hl7::ack ack) {
                                                      self.signals_.erase(id);
                                                      self.core_.sent(id, ec, ack, outbox_clock::now());
                                                  })));
}

void lane_runner::arm(outbox_clock::time_point deadline)
{
    ++timer_generation_;
    if (deadline == outbox_clock::time_point::max()) {
        timer_.cancel();
        return;
    }
    const auto wait = deadline - outbox_clock::now();
    timer_.expires_after(std::chrono::duration_cast<asio::steady_timer::duration>(std::max(wait, outbox_clock::duration::zero())));
    timer_.async_wait(on_strand([generation = timer_generation_](lane_runner& self, error_code) {
        if (generation == self.timer_generation_)
            self.core_.timer_fired(outbox_clock::now());
    }));
}

void lane_runner::notify(const detail::lane_note& n)
{
    tell(box_->options.observer, {.what = n.what,
                                  .destination = destination_,
                                  .lane = lane_,
                                  .id = n.id,
                                  .control_id = n.control_id,
                                  .state = n.state,
                                  .possible_duplicate = n.possible_duplicate,
                                  .attempts = n.attempts,
                                  .error = n.error,
                                  .delay = std::chrono::duration_cast<std::chrono::milliseconds>(n.delay),
                                  .token = lease_.token});
    if (n.what == outbox_event::kind::outcome)
        box_->wake_waiters();
}

// Nothing is outstanding in the core: give the lease back, close the connection, report.
void lane_runner::finish(error_code ec)
{
    ++timer_generation_;
    timer_.cancel();
    if (lease_.token != 0)
        box_->store->release(lease_, asio::bind_executor(box_->strand, [](error_code) {}));
    auto report = [self = shared_from_this(), ec] {
        tell(self->box_->options.observer, {.what = outbox_event::kind::lane_stopped,
                                            .destination = self->destination_,
                                            .lane = self->lane_,
                                            .error = ec,
                                            .token = self->lease_.token});
        auto run = std::move(self->run_);
        run->lane_stopped(self->lane_, ec);
    };
    if (conn_)
        conn_->async_close(asio::bind_executor(box_->strand, std::move(report)));
    else
        asio::post(box_->strand, std::move(report));
}

} // namespace

// --- outbox::impl --------------------------------------------------------------------------------

void outbox::impl::wake(const std::string& destination, std::uint32_t lane)
{
    if (auto it = runs.find(destination); it != runs.end())
        it->second->wake(lane);
}

void outbox::impl::changed(const detail::store_change& c)
{
    using kind = detail::store_change::kind;
    if (closing)
        return;
    if (c.what == kind::queued) {
        wake(c.lane.destination, c.lane.lane);
        return;
    }
    if (c.what == kind::retried || c.what == kind::unknown)
        for (auto& [key, run] : runs)
            run->wake_all();
    if (c.what == kind::outcome || c.what == kind::unknown)
        wake_waiters();
}

void outbox::impl::wake_waiters()
{
    std::vector<std::shared_ptr<outcome_waiter>> all(waiters.begin(), waiters.end());
    for (auto& w : all)
        query(w);
}

void outbox::impl::query(const std::shared_ptr<outcome_waiter>& w)
{
    if (!w->h)
        return;
    if (w->querying) {
        w->again = true;
        return;
    }
    w->querying = true;
    w->again = false;
    store->select({.after_outcome = w->after, .limit = 1},
                  asio::bind_executor(strand, [self = shared_from_this(), w](error_code ec, std::vector<outbox_record> v) {
                      w->querying = false;
                      if (!w->h)
                          return;
                      if (ec)
                          self->finish_waiter(w, ec);
                      else if (!v.empty())
                          self->finish_waiter(w, {}, std::move(v.front()));
                      else if (w->again)
                          self->query(w);
                  }));
}

void outbox::impl::finish_waiter(const std::shared_ptr<outcome_waiter>& w, error_code ec, outbox_record r)
{
    if (!w->h)
        return;
    waiters.remove(w);
    auto h = std::move(*w->h);
    w->h.reset();
    h.get_cancellation_slot().clear();
    complete(std::move(h), ex, ec, std::move(r));
}

void outbox::impl::arm_poll()
{
    if (polling || waiters.empty() || closing)
        return;
    polling = true;
    poll.expires_after(options.poll_interval);
    poll.async_wait(asio::bind_executor(strand, [self = shared_from_this()](error_code) {
        self->polling = false;
        self->wake_waiters();
        self->arm_poll();
    }));
}

void outbox::impl::run_finished(const std::string& destination)
{
    runs.erase(destination);
    finish_close();
}

void outbox::impl::finish_close()
{
    if (!closing || !runs.empty())
        return;
    if (store_closed) {
        auto pending = std::move(close_waiters);
        close_waiters.clear();
        for (auto& h : pending)
            if (h)
                complete(std::move(h), ex);
        return;
    }
    store->close(asio::bind_executor(strand, [self = shared_from_this()] {
        self->store_closed = true;
        self->finish_close();
    }));
}

// --- outbox --------------------------------------------------------------------------------------

outcome::result<outbox> outbox::open(executor_type ex, outbox_options options)
{
    const outbox_location where = parse_outbox_location(options.location);
    if (where.what == outbox_location::kind::postgresql) {
#ifdef HL7_OUTBOX_POSTGRESQL
        auto store = detail::open_pg_store(ex, where.target,
                                           {.schema = options.schema,
                                            .connections = options.connections,
                                            // Stopped past its lease, an instance's open
                                            // transactions go too, and with them its locks.
                                            .idle_in_transaction = options.lease_ttl});
        if (!store)
            return store.error();
        auto i = std::make_shared<impl>(std::move(ex), std::move(options), std::move(store).value(), true);
        // What other instances store wakes this one's lanes and waiters (NOTIFY); polling stays
        // for what a notification misses.
        i->store->watch([w = std::weak_ptr<impl>(i)](detail::store_change c) {
            if (auto i = w.lock())
                asio::post(i->strand, [i, c = std::move(c)] { i->changed(c); });
        });
        return outbox(std::move(i));
#else
        return error_code(outbox_errc::unsupported_location);
#endif
    }
    auto store = detail::open_sqlite_store(
        ex, where.target,
        {.synchronous = options.synchronous, .busy_timeout = options.busy_timeout, .observer = options.observer});
    if (!store)
        return store.error();
    return outbox(std::make_shared<impl>(std::move(ex), std::move(options), std::move(store).value(), false));
}

outbox::outbox(std::shared_ptr<impl> i) noexcept : impl_(std::move(i)) {}
outbox::outbox(outbox&&) noexcept = default;
outbox& outbox::operator=(outbox&& other) noexcept
{
    if (this != &other) {
        if (impl_)
            close_impl(impl_, {});
        impl_ = std::move(other.impl_);
    }
    return *this;
}

outbox::~outbox()
{
    if (impl_)
        close_impl(impl_, {});
}

outbox::executor_type outbox::get_executor() const noexcept
{
    return impl_->ex;
}

void outbox::enqueue_impl(const std::shared_ptr<impl>& i, outbox_destination to, message msg, enqueue_options options,
                          handler<enqueue_signature> h)
{
    error_code ec;
    std::uint32_t lane = 0;
    if (!parse_host(to.host))
        ec = errc::invalid_host;
    else if (to.port == 0)
        ec = errc::invalid_port;
    else if (msg.control_id().empty())
        ec = errc::missing_control_id;
    else if (auto l = outbox_lane(msg, options); !l)
        ec = l.error();
    else
        lane = l.value();
    if (ec) {
        complete_later(std::move(h), i->ex, ec, enqueue_result{});
        return;
    }
    std::string key = to_string(to);
    detail::new_message m{.destination = key,
                          .lane = lane,
                          .control_id = std::string(msg.control_id()),
                          .bytes = std::string(msg.str()),
                          .at = outbox_clock::now()};
    i->store->enqueue(std::move(m), then(std::move(h), i->ex,
                                         [i, key = std::move(key), lane](handler<enqueue_signature> h, error_code ec,
                                                                         enqueue_result r) {
                                             if (!ec && !r.duplicate)
                                                 asio::post(i->strand, [i, key, lane] { i->wake(key, lane); });
                                             std::move(h)(ec, r);
                                         }));
}

void outbox::run_impl(const std::shared_ptr<impl>& i, outbox_destination to, outbox_run_options options,
                      handler<run_signature> h)
{
    error_code ec;
    std::optional<client> c;
    if (to.port == 0) {
        ec = errc::invalid_port;
    } else if (auto made = client::create(i->ex, {.host = to.host, .defaults = options.connection}); !made) {
        ec = made.error();
    } else {
        c.emplace(std::move(made).value());
    }
    if (ec) {
        complete_later(std::move(h), i->ex, ec);
        return;
    }
    auto slot = h.get_cancellation_slot();
    std::string key = to_string(to);
    auto run = std::make_shared<run_state>(i, std::move(to), key, std::move(options), std::move(*c), std::move(h));
    if (slot.is_connected())
        run->set_slot(slot);
    asio::post(i->strand, [i, run] {
        if (i->closing) {
            run->stop(outbox_errc::closed);
            return;
        }
        if (i->runs.contains(run->key())) {
            run->stop(outbox_errc::already_running);
            return;
        }
        i->runs.emplace(run->key(), run);
        run->start();
    });
}

void outbox::next_outcome_impl(const std::shared_ptr<impl>& i, std::uint64_t after, handler<record_signature> h)
{
    auto w = std::make_shared<outcome_waiter>();
    w->after = after;
    auto slot = h.get_cancellation_slot();
    w->h.emplace(std::move(h));
    if (slot.is_connected())
        slot.assign([wk = std::weak_ptr<outcome_waiter>(w), i](asio::cancellation_type) {
            asio::post(i->strand, [wk, i] {
                if (auto w = wk.lock())
                    i->finish_waiter(w, asio::error::operation_aborted);
            });
        });
    asio::post(i->strand, [i, w] {
        if (i->closing) {
            i->finish_waiter(w, outbox_errc::closed);
            return;
        }
        i->waiters.push_back(w);
        i->query(w);
        i->arm_poll();
    });
}

void outbox::latest_outcome_impl(const std::shared_ptr<impl>& i, handler<count_signature> h)
{
    i->store->latest_outcome(std::move(h));
}

void outbox::get_impl(const std::shared_ptr<impl>& i, std::int64_t id, handler<record_signature> h)
{
    i->store->select({.id = id, .limit = 1},
                     then(std::move(h), i->ex,
                          [](handler<record_signature> h, error_code ec, std::vector<outbox_record> v) {
                              if (!ec && v.empty())
                                  ec = outbox_errc::not_found;
                              std::move(h)(ec, ec ? outbox_record{} : std::move(v.front()));
                          }));
}

void outbox::find_impl(const std::shared_ptr<impl>& i, outbox_destination to, std::string control_id,
                       handler<record_signature> h)
{
    i->store->select({.destination = to_string(to), .control_id = std::move(control_id), .limit = 1},
                     then(std::move(h), i->ex,
                          [](handler<record_signature> h, error_code ec, std::vector<outbox_record> v) {
                              if (!ec && v.empty())
                                  ec = outbox_errc::not_found;
                              std::move(h)(ec, ec ? outbox_record{} : std::move(v.front()));
                          }));
}

void outbox::list_impl(const std::shared_ptr<impl>& i, outbox_filter filter, handler<records_signature> h)
{
    i->store->select({.destination = std::move(filter.destination),
                      .states = std::move(filter.states),
                      .after_id = filter.after_id,
                      .limit = filter.limit},
                     std::move(h));
}

void outbox::status_impl(const std::shared_ptr<impl>& i, handler<status_signature> h)
{
    i->store->status(std::move(h));
}

void outbox::retry_impl(const std::shared_ptr<impl>& i, std::vector<std::int64_t> ids, bool all_dead,
                        handler<count_signature> h)
{
    // Runs in this process pick the retried messages up at once; others when notified
    // (PostgreSQL) or at their next poll.
    i->store->retry(std::move(ids), all_dead, outbox_clock::now(),
                    then(std::move(h), i->ex, [i](handler<count_signature> h, error_code ec, std::uint64_t n) {
                        if (!ec && n > 0)
                            asio::post(i->strand, [i] {
                                for (auto& [key, run] : i->runs)
                                    run->wake_all();
                            });
                        std::move(h)(ec, n);
                    }));
}

void outbox::purge_impl(const std::shared_ptr<impl>& i, outbox_clock::time_point before, handler<count_signature> h)
{
    i->store->purge(before, std::move(h));
}

void outbox::close_impl(const std::shared_ptr<impl>& i, handler<void()> h)
{
    asio::post(i->strand, [i, h = std::move(h)]() mutable {
        i->close_waiters.push_back(std::move(h));
        if (!i->closing) {
            i->closing = true;
            i->poll.cancel();
            std::vector<std::shared_ptr<outcome_waiter>> waiting(i->waiters.begin(), i->waiters.end());
            for (auto& w : waiting)
                i->finish_waiter(w, outbox_errc::closed);
            std::vector<std::shared_ptr<run_state>> running;
            for (auto& [key, run] : i->runs)
                running.push_back(run);
            for (auto& run : running)
                run->stop(outbox_errc::closed);
        }
        i->finish_close();
    });
}

// --- coroutine forms -----------------------------------------------------------------------------

asio::awaitable<outcome::result<enqueue_result>> outbox::enqueue(const outbox_destination& to, message msg)
{
    return enqueue(to, std::move(msg), enqueue_options{});
}

asio::awaitable<outcome::result<enqueue_result>> outbox::enqueue(const outbox_destination& to, message msg,
                                                                 const enqueue_options& options)
{
    // Without a coroutine frame of its own: the awaitable completes straight from the
    // operation's handler (see connection::send).
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(outcome::result<enqueue_result>)>(
        [i = impl_](auto handler, outbox_destination d, message m, enqueue_options o) {
            auto ex = asio::get_associated_executor(handler);
            auto to_result = [h = std::move(handler)](error_code ec, enqueue_result r) mutable {
                std::move(h)(ec ? outcome::result<enqueue_result>(ec) : outcome::result<enqueue_result>(r));
            };
            enqueue_impl(i, std::move(d), std::move(m), std::move(o), asio::bind_executor(ex, std::move(to_result)));
        },
        asio::use_awaitable, to, std::move(msg), options);
}

asio::awaitable<outcome::result<void>> outbox::run(const outbox_destination& to, const outbox_run_options& options)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(outcome::result<void>)>(
        [i = impl_](auto handler, outbox_destination d, outbox_run_options o) {
            auto slot = asio::get_associated_cancellation_slot(handler);
            auto ex = asio::get_associated_executor(handler);
            auto to_result = [h = std::move(handler)](error_code ec) mutable {
                std::move(h)(ec ? outcome::result<void>(ec) : outcome::result<void>(outcome::success()));
            };
            run_impl(i, std::move(d), std::move(o),
                     asio::bind_cancellation_slot(slot, asio::bind_executor(ex, std::move(to_result))));
        },
        asio::use_awaitable, to, options);
}

asio::awaitable<outcome::result<outbox_record>> outbox::next_outcome(std::uint64_t after)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(outcome::result<outbox_record>)>(
        [i = impl_](auto handler, std::uint64_t a) {
            auto slot = asio::get_associated_cancellation_slot(handler);
            auto ex = asio::get_associated_executor(handler);
            auto to_result = [h = std::move(handler)](error_code ec, outbox_record r) mutable {
                std::move(h)(ec ? outcome::result<outbox_record>(ec) : outcome::result<outbox_record>(std::move(r)));
            };
            next_outcome_impl(i, a, asio::bind_cancellation_slot(slot, asio::bind_executor(ex, std::move(to_result))));
        },
        asio::use_awaitable, after);
}

asio::awaitable<void> outbox::close()
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
        [i = impl_](auto handler) { close_impl(i, std::move(handler)); }, asio::use_awaitable);
}

} // namespace hl7
