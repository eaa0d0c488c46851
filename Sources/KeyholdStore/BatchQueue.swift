/// Runs concurrent calls as batches: one statement, one round trip and, for writes, one durable
/// commit for the lot (group commit).
///
/// Each caller submits one item and waits for its own result. Up to `lanes` batches run at once;
/// a lane takes every item waiting (at most `maximumBatch`), runs them through `commit` (one
/// transaction, so one fsync for the lot) and hands each caller its result, then takes the next
/// waiting items, until none wait. No timer: a lone caller is served at once, and batches grow
/// only while earlier batches are in flight — exactly when sharing a round trip saves time.
///
/// `commit` returns one result per item, in order. If it throws, every item of that batch gets
/// the error: nothing of a failed transaction may be reported as done.
public actor BatchQueue<Item: Sendable, Output: Sendable> {
    /// Commits one batch and answers each item, in order.
    public typealias Commit = @Sendable ([Item]) async throws -> [Result<Output, any Error>]

    private var waiting: [(item: Item, reply: CheckedContinuation<Output, any Error>)] = []
    private var running = 0
    private let lanes: Int
    private let maximumBatch: Int
    private let commit: Commit
    private let batched: @Sendable (Int) -> Void

    /// A queue with at most `lanes` batches in flight, each of at most `maximumBatch` items;
    /// `batched` hears the size of each batch as it starts.
    public init(lanes: Int, maximumBatch: Int, batched: @escaping @Sendable (Int) -> Void = { _ in }, commit: @escaping Commit) {
        precondition(lanes > 0 && maximumBatch > 0)
        self.lanes = lanes
        self.maximumBatch = maximumBatch
        self.batched = batched
        self.commit = commit
    }

    /// Commits `item` together with whatever else is waiting; returns after the commit.
    public func submit(_ item: Item) async throws -> Output {
        try await withCheckedThrowingContinuation { reply in
            waiting.append((item, reply))
            if running < lanes {
                running += 1
                Task { await self.lane() }
            }
        }
    }

    /// Runs batches until nothing waits. The actor is free while a batch commits, so callers keep
    /// queueing behind it.
    private func lane() async {
        while !waiting.isEmpty {
            let batch = Array(waiting.prefix(maximumBatch))
            waiting.removeFirst(batch.count)
            batched(batch.count)
            let results: [Result<Output, any Error>]
            do {
                results = try await commit(batch.map(\.item))
                precondition(results.count == batch.count, "a group commit returned \(results.count) results for \(batch.count) items")
            } catch {
                for entry in batch { entry.reply.resume(throwing: error) }
                continue
            }
            for (entry, result) in zip(batch, results) { entry.reply.resume(with: result) }
        }
        running -= 1
    }
}
