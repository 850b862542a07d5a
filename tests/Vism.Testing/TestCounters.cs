using System.Collections.Concurrent;
using Vism.Abstractions;

namespace Vism.Testing;

/// <summary>Counters a test can read.</summary>
public sealed class TestCounters : IDeviceCounters
{
    private readonly ConcurrentDictionary<string, long> _values = new();

    /// <inheritdoc />
    public void Increment(string name, long by = 1) => _values.AddOrUpdate(name, by, (_, v) => v + by);

    /// <inheritdoc />
    public long Get(string name) => _values.GetValueOrDefault(name);
}
