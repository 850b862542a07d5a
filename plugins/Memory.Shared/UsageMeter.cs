using Vism.Abstractions;

namespace Vism.Memory.Shared;

/// <summary>
/// Capacity accounting shared by a backend and the blocks it handed out. Thread-safe and lock-free:
/// a block may be released on another device's loop (the last device that referenced the region),
/// and may outlive its backend.
/// </summary>
internal sealed class UsageMeter(ulong capacity)
{
    private ulong _used;
    private ulong _highWater;

    public ulong Capacity { get; } = capacity;

    public MemoryUsage Usage => new(Capacity, Volatile.Read(ref _used), Volatile.Read(ref _highWater));

    /// <summary>Reserves <paramref name="bytes"/> if they fit under the capacity. The high-water mark
    /// moves only when the caller confirms, so an allocation that fails later never shows in it.</summary>
    /// <param name="bytes">Bytes to reserve.</param>
    /// <param name="total">Bytes in use with this reservation, for <see cref="Confirm"/>.</param>
    public bool TryReserve(ulong bytes, out ulong total)
    {
        while (true)
        {
            ulong used = Volatile.Read(ref _used);
            total = used + bytes;
            if (bytes > Capacity || used > Capacity - bytes) return false;
            if (Interlocked.CompareExchange(ref _used, total, used) == used) return true;
        }
    }

    /// <summary>A reservation became a live region: <paramref name="total"/> bytes were in use.</summary>
    public void Confirm(ulong total) => RaiseHighWater(total);

    /// <summary>Counts <paramref name="bytes"/> even beyond the capacity (regions recovered from an
    /// earlier run with a larger capacity are kept, not dropped).</summary>
    public void Add(ulong bytes)
    {
        ulong now = Interlocked.Add(ref _used, bytes);
        RaiseHighWater(now);
    }

    /// <summary>Gives back bytes reserved or added earlier.</summary>
    public void Return(ulong bytes)
    {
        while (true)
        {
            ulong used = Volatile.Read(ref _used);
            ulong next = used >= bytes ? used - bytes : 0;
            if (Interlocked.CompareExchange(ref _used, next, used) == used) return;
        }
    }

    private void RaiseHighWater(ulong value)
    {
        while (true)
        {
            ulong high = Volatile.Read(ref _highWater);
            if (value <= high || Interlocked.CompareExchange(ref _highWater, value, high) == high) return;
        }
    }
}
