using Vism.Abstractions;

namespace Vism.Transport.VhostUser;

/// <summary>A mapping in a window of the frontend.</summary>
internal readonly record struct WindowMapping(ShmId ShmId, ulong Offset, ulong Length);

/// <summary>
/// Which window mappings the frontend holds for this connection ("live"), and which it may still
/// hold from before a reset or a reconnect ("stale", kept by the transport across connections and
/// unmapped at the next start). A generation counter tells a map whose reply arrives after a reset
/// that its reservation is gone.
/// </summary>
internal sealed class MappingBook(VhostUserTransport transport)
{
    private readonly Dictionary<(ShmId, ulong), ulong> _live = [];
    private int _generation;

    /// <summary>The live mappings in window <paramref name="shmId"/>.</summary>
    public IEnumerable<MappedRange> In(ShmId shmId)
    {
        foreach (((ShmId id, ulong at), ulong length) in _live)
            if (id == shmId) yield return new MappedRange(at, length);
    }

    public bool Contains(ShmId shmId, ulong offset) => _live.ContainsKey((shmId, offset));

    /// <summary>Reserves a range while the frontend's reply is outstanding, so no overlapping map
    /// races it. Returns the generation to hand to <see cref="Release"/>.</summary>
    public int Reserve(ShmId shmId, ulong offset, ulong length)
    {
        _live[(shmId, offset)] = length;
        return _generation;
    }

    /// <summary>Drops a reservation whose map failed, unless a reset moved it away meanwhile.</summary>
    public void Release(int generation, ShmId shmId, ulong offset, ulong length)
    {
        if (generation == _generation && _live.TryGetValue((shmId, offset), out ulong l) && l == length)
            _live.Remove((shmId, offset));
    }

    /// <summary>Removes a live mapping; false when nothing of that length is mapped there.</summary>
    public bool TryRemove(WindowMapping mapping)
    {
        if (!_live.TryGetValue((mapping.ShmId, mapping.Offset), out ulong length) || length != mapping.Length) return false;
        _live.Remove((mapping.ShmId, mapping.Offset));
        return true;
    }

    public bool IsStale(WindowMapping mapping) => transport.IsStale(mapping);

    public void MarkStale(WindowMapping mapping) => transport.AddStale(mapping);

    public List<WindowMapping> TakeStale() => transport.TakeStale();

    /// <summary>A reset or a disconnect: every live mapping becomes stale and outstanding
    /// reservations lose their claim.</summary>
    public void MoveAllToStale()
    {
        foreach (((ShmId id, ulong offset), ulong length) in _live)
            transport.AddStale(new WindowMapping(id, offset, length));
        _live.Clear();
        _generation++;
    }
}
