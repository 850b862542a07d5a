using System.Collections.Concurrent;
using Vism.Abstractions;

namespace Vism.Core;

/// <summary>
/// Thread-safe named counters of one device (ERR reasons such as <c>err.alloc.too-large</c>,
/// routed events, anything a plugin wants visible in <c>vism status</c>).
/// </summary>
public sealed class DeviceCounters : IDeviceCounters
{
    private readonly ConcurrentDictionary<string, StrongBox> _values = new(StringComparer.Ordinal);

    /// <inheritdoc />
    public void Increment(string name, long by = 1)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        StrongBox box = _values.GetOrAdd(name, static _ => new StrongBox());
        Interlocked.Add(ref box.Value, by);
    }

    /// <inheritdoc />
    public long Get(string name) =>
        _values.TryGetValue(name, out StrongBox? box) ? Interlocked.Read(ref box.Value) : 0;

    /// <summary>Sum of every counter whose name starts with <paramref name="prefix"/> (e.g. <c>err.</c>).</summary>
    /// <param name="prefix">The name prefix.</param>
    /// <returns>The sum.</returns>
    public long Sum(string prefix)
    {
        long sum = 0;
        foreach (KeyValuePair<string, StrongBox> kv in _values)
            if (kv.Key.StartsWith(prefix, StringComparison.Ordinal))
                sum += Interlocked.Read(ref kv.Value.Value);
        return sum;
    }

    /// <summary>A consistent-enough copy of every counter, sorted by name.</summary>
    /// <returns>Name to value.</returns>
    public IReadOnlyDictionary<string, long> Snapshot()
    {
        var copy = new SortedDictionary<string, long>(StringComparer.Ordinal);
        foreach (KeyValuePair<string, StrongBox> kv in _values)
            copy[kv.Key] = Interlocked.Read(ref kv.Value.Value);
        return copy;
    }

    private sealed class StrongBox
    {
        public long Value;
    }
}
