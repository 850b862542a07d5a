namespace Vism.Core;

/// <summary>
/// Region slots of one REGIONS window: hands out the lowest free slot, with memory proportional to
/// the slots in use (a window may have millions of slots). Loop-only, except
/// <see cref="HighWater"/> and <see cref="InUse"/>, which any thread may read.
/// </summary>
internal sealed class SlotAllocator(int capacity)
{
    private readonly SortedSet<int> _returned = [];
    private volatile int _highWater; // every slot >= this is free
    private volatile int _inUse;

    /// <summary>Total slots.</summary>
    public int Capacity { get; } = capacity;

    /// <summary>One more than the highest slot in use (0 when none).</summary>
    public int HighWater => _highWater;

    /// <summary>Slots in use.</summary>
    public int InUse => _inUse;

    /// <summary>Takes the lowest free slot; -1 when all are in use.</summary>
    public int Take()
    {
        int slot;
        if (_returned.Count > 0)
        {
            slot = _returned.Min;
            _returned.Remove(slot);
        }
        else if (_highWater < Capacity)
        {
            slot = _highWater;
            _highWater = slot + 1;
        }
        else
        {
            return -1;
        }
        _inUse++;
        return slot;
    }

    /// <summary>Returns a slot taken earlier.</summary>
    public void Return(int slot)
    {
        if (slot < 0 || slot >= _highWater || !_returned.Add(slot))
            throw new InvalidOperationException($"slot {slot} is not in use");
        _inUse--;
        // Shrink the high-water mark over free slots at the top.
        int high = _highWater;
        while (high > 0 && _returned.Remove(high - 1))
            high--;
        _highWater = high;
    }

    /// <summary>Frees every slot.</summary>
    public void Clear()
    {
        _returned.Clear();
        _highWater = 0;
        _inUse = 0;
    }
}
