// Copyright regserve authors.
#include "core/jobs/event_stream.h"

#include <algorithm>
#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "core/common/status_macros.h"
#include "core/jobs/result_reader.h"

namespace regserve {
namespace internal {

// Pending live events per reader beyond which progress events are dropped.
constexpr size_t kMaxPendingEvents = 256;
// Unread live tiles per reader beyond which it switches to the stored
// result: a slow reader must not hold the whole image in memory.
constexpr int kMaxPendingTiles = 8;

struct Subscriber {
  absl::Mutex mu;
  std::deque<JobEvent> pending ABSL_GUARDED_BY(mu);
  bool closed ABSL_GUARDED_BY(mu) = false;
  bool shutdown ABSL_GUARDED_BY(mu) = false;
  // Set when the stream ends with an error (from_tile beyond the result).
  absl::Status error ABSL_GUARDED_BY(mu);
  bool have_terminal ABSL_GUARDED_BY(mu) = false;
  JobEvent terminal ABSL_GUARDED_BY(mu);
  bool done ABSL_GUARDED_BY(mu) = false;
  // Tiles replayed from the stored result before the terminal event.
  bool replay ABSL_GUARDED_BY(mu) = false;
  std::string result_path ABSL_GUARDED_BY(mu);
  TileGrid tiles ABSL_GUARDED_BY(mu);
  int64_t next_tile ABSL_GUARDED_BY(mu) = 0;
  // Live tiles: taken while in order and the reader keeps up.
  bool live_tiles ABSL_GUARDED_BY(mu) = true;
  int pending_tiles ABSL_GUARDED_BY(mu) = 0;

  TileDemand Demand(int64_t index) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    if (closed || have_terminal || !error.ok() || !live_tiles ||
        next_tile != index) {
      return TileDemand::kNone;
    }
    return pending_tiles < kMaxPendingTiles ? TileDemand::kNow
                                            : TileDemand::kLater;
  }

  void PushTile(const JobEvent& tile) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    if (closed || have_terminal || !error.ok() || !live_tiles ||
        tile.tile_index != next_tile) {
      return;
    }
    if (pending_tiles >= kMaxPendingTiles) {
      live_tiles = false;  // the rest comes from the stored result
      return;
    }
    pending.push_back(tile);
    ++pending_tiles;
    ++next_tile;
  }

  bool Ready() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    return closed || shutdown || done || !error.ok() || !pending.empty() ||
           have_terminal;
  }

  bool Closed() ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    return closed;
  }

  void Push(JobEvent event) ABSL_LOCKS_EXCLUDED(mu) {
    absl::MutexLock lock(&mu);
    if (closed || have_terminal || !error.ok()) return;
    if (event.kind == JobEvent::Kind::kAccepted &&
        next_tile > event.info.tiles.count()) {
      error = absl::OutOfRangeError(
          absl::StrCat("from_tile ", next_tile, " is beyond the result's ",
                       event.info.tiles.count(), " tiles"));
      return;
    }
    // Coalesce progress of the same stage, and queue positions, so that a
    // slow reader stays bounded: only the latest of each matters.
    if (!pending.empty() && pending.back().kind == event.kind &&
        ((event.kind == JobEvent::Kind::kProgress &&
          pending.back().stage == event.stage) ||
         event.kind == JobEvent::Kind::kQueued)) {
      pending.back() = std::move(event);
      return;
    }
    if (pending.size() >= kMaxPendingEvents) {
      auto it = std::find_if(pending.begin(), pending.end(), [](const auto& e) {
        return e.kind == JobEvent::Kind::kProgress;
      });
      if (it != pending.end()) pending.erase(it);
    }
    pending.push_back(std::move(event));
  }

  // The terminal event; for a completed job, tiles are replayed first.
  void SetTerminalLocked(JobEvent terminal_event, const JobInfo& info)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    have_terminal = true;
    terminal = std::move(terminal_event);
    if (info.state == JobState::kCompleted && info.tiles.count() > 0) {
      replay = true;
      result_path = info.result_path;
      tiles = info.tiles;
    }
  }
};

}  // namespace internal

namespace {

using internal::Subscriber;

class JobEventStream final : public EventStream {
 public:
  explicit JobEventStream(std::shared_ptr<Subscriber> sub)
      : sub_(std::move(sub)) {}
  ~JobEventStream() override { Close(); }

  absl::Status Next(JobEvent* event, absl::Time deadline) override {
    int64_t tile = -1;
    std::string path;
    TileGrid tiles;
    std::string job_id;
    {
      absl::MutexLock lock(&sub_->mu);
      sub_->mu.AwaitWithDeadline(
          absl::Condition(sub_.get(), &Subscriber::Ready), deadline);
      if (sub_->closed) return absl::CancelledError("event stream closed");
      if (sub_->done) return absl::OutOfRangeError("event stream has ended");
      if (!sub_->error.ok()) {
        sub_->done = true;
        return sub_->error;
      }
      if (!sub_->pending.empty()) {
        *event = std::move(sub_->pending.front());
        sub_->pending.pop_front();
        if (event->kind == JobEvent::Kind::kTile) --sub_->pending_tiles;
        return absl::OkStatus();
      }
      if (!sub_->have_terminal) {
        if (sub_->shutdown) {
          return absl::UnavailableError("job manager is shutting down");
        }
        return absl::DeadlineExceededError("no event yet");
      }
      if (!sub_->replay || sub_->next_tile >= sub_->tiles.count()) {
        *event = sub_->terminal;
        sub_->done = true;
        return absl::OkStatus();
      }
      tile = sub_->next_tile++;
      path = sub_->result_path;
      tiles = sub_->tiles;
      job_id = sub_->terminal.job_id;
    }
    absl::Status s = ReadTile(path, tile, tiles, event);
    if (!s.ok()) {
      absl::MutexLock lock(&sub_->mu);
      sub_->done = true;
      return s;
    }
    event->job_id = job_id;
    return absl::OkStatus();
  }

  void Close() override {
    absl::MutexLock lock(&sub_->mu);
    sub_->closed = true;
  }

 private:
  // Tile `index` of the stored result, on the reader's thread.
  absl::Status ReadTile(const std::string& path, int64_t index,
                        const TileGrid& tiles, JobEvent* event) {
    if (!reader_) {
      REGSERVE_ASSIGN_OR_RETURN(reader_, ResultReader::Open(path));
    }
    const ImageSpec& spec = reader_->spec();
    const TileGrid grid(spec.width, spec.height, tiles.edge());
    const TileRect rect = grid.rect(index);
    absl::StatusOr<std::string> data = reader_->ReadRegion(rect);
    if (!data.ok()) {
      // OutOfRange means "the stream has ended" to callers of Next: a tile
      // outside the stored result is an inconsistency, not an end.
      return absl::DataLossError(
          absl::StrCat("result tile ", index, ": ", data.status().message()));
    }
    JobEvent ev;
    ev.kind = JobEvent::Kind::kTile;
    ev.stage = Stage::kStream;
    ev.tile_index = index;
    ev.grid = grid;
    ev.rect = rect;
    ev.channels = spec.channels;
    ev.sample_type = spec.type;
    ev.encoding = TileEncoding::kRaw;
    ev.data = *std::move(data);
    *event = std::move(ev);
    return absl::OkStatus();
  }

  std::shared_ptr<Subscriber> sub_;
  std::unique_ptr<ResultReader> reader_;
};

// What a new reader of a job in `info`'s state sees first.
void PushPresent(const JobInfo& info, Subscriber* sub)
    ABSL_EXCLUSIVE_LOCKS_REQUIRED(sub->mu) {
  if (info.has_plan) {
    JobEvent accepted;
    accepted.kind = JobEvent::Kind::kAccepted;
    accepted.job_id = info.id;
    accepted.info = info;
    sub->pending.push_back(std::move(accepted));
  }
  if (IsTerminal(info.state)) {
    sub->SetTerminalLocked(TerminalEvent(info), info);
    return;
  }
  JobEvent now;
  now.job_id = info.id;
  if (info.state == JobState::kQueued) {
    now.kind = JobEvent::Kind::kQueued;
    now.queue_position = info.queue_position;
  } else {
    now.kind = JobEvent::Kind::kProgress;
    now.stage = info.stage;
    now.fraction = info.stage_fraction;
    now.detail = info.stage_detail;
  }
  sub->pending.push_back(std::move(now));
}

}  // namespace

absl::Status CheckFromTile(const JobInfo& info, int64_t from_tile) {
  if (from_tile < 0) {
    return absl::InvalidArgumentError("from_tile must be >= 0");
  }
  if (info.has_plan && from_tile > info.tiles.count()) {
    return absl::OutOfRangeError(absl::StrCat("from_tile ", from_tile,
                                              " is beyond the result's ",
                                              info.tiles.count(), " tiles"));
  }
  return absl::OkStatus();
}

JobEvent TerminalEvent(const JobInfo& info) {
  JobEvent ev;
  ev.kind = info.state == JobState::kCompleted ? JobEvent::Kind::kCompleted
                                               : JobEvent::Kind::kFailed;
  ev.job_id = info.id;
  ev.info = info;
  return ev;
}

absl::StatusOr<std::unique_ptr<EventStream>> JobEvents::Open(
    const JobInfo& info, int64_t from_tile, bool shutting_down) {
  REGSERVE_RETURN_IF_ERROR(CheckFromTile(info, from_tile));
  auto sub = std::make_shared<Subscriber>();
  {
    absl::MutexLock lock(&sub->mu);
    sub->next_tile = from_tile;
    sub->terminal.job_id = info.id;
    PushPresent(info, sub.get());
    if (shutting_down && !IsTerminal(info.state)) sub->shutdown = true;
  }
  if (!IsTerminal(info.state)) {
    // Readers that went away are dropped here too, not only when the job
    // next publishes: a quiet job watched many times stays bounded.
    subs_.erase(std::remove_if(subs_.begin(), subs_.end(),
                               [](const auto& s) { return s->Closed(); }),
                subs_.end());
    subs_.push_back(sub);
  }
  return std::unique_ptr<EventStream>(new JobEventStream(std::move(sub)));
}

void JobEvents::Publish(const JobEvent& event) {
  subs_.erase(std::remove_if(subs_.begin(), subs_.end(),
                             [](const auto& s) { return s->Closed(); }),
              subs_.end());
  for (const auto& sub : subs_) sub->Push(event);
}

TileDemand JobEvents::Demand(int64_t index) const {
  TileDemand d = TileDemand::kNone;
  for (const auto& sub : subs_) d = std::max(d, sub->Demand(index));
  return d;
}

void JobEvents::PublishTile(const JobEvent& tile) {
  for (const auto& sub : subs_) sub->PushTile(tile);
}

void JobEvents::Finish(const JobEvent& terminal, const JobInfo& info) {
  for (const auto& sub : subs_) {
    absl::MutexLock lock(&sub->mu);
    if (sub->closed || sub->have_terminal) continue;
    sub->SetTerminalLocked(terminal, info);
  }
  subs_.clear();
}

void JobEvents::Shutdown() {
  for (const auto& sub : subs_) {
    absl::MutexLock lock(&sub->mu);
    sub->shutdown = true;
  }
  subs_.clear();
}

}  // namespace regserve
