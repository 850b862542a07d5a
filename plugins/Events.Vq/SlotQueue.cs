namespace Vism.Events.Vq;

/// <summary>
/// A first-in first-out set of region slots: each slot is in it at most once, so it never holds
/// more than the device has slots. Adding, removing any slot and taking the first are O(1)
/// (an intrusive doubly linked list over the slot numbers). Loop thread only.
/// </summary>
internal sealed class SlotQueue
{
    private const int None = -1;
    private readonly int[] _next;
    private readonly int[] _prev;
    private readonly bool[] _queued;
    private int _head = None;
    private int _tail = None;

    /// <summary>Creates an empty queue for slots 0..<paramref name="slots"/>-1.</summary>
    /// <param name="slots">Number of slots.</param>
    public SlotQueue(int slots)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(slots);
        _next = new int[slots];
        _prev = new int[slots];
        _queued = new bool[slots];
    }

    /// <summary>Slots queued.</summary>
    public int Count { get; private set; }

    /// <summary>The first slot, or -1 when empty.</summary>
    public int First => _head;

    /// <summary>The slot after <paramref name="slot"/>, or -1 at the end.</summary>
    /// <param name="slot">A queued slot.</param>
    public int Next(int slot) => _next[slot];

    /// <summary>Whether <paramref name="slot"/> is queued.</summary>
    /// <param name="slot">A slot.</param>
    public bool Contains(int slot) => _queued[slot];

    /// <summary>Appends <paramref name="slot"/> unless it is already queued.</summary>
    /// <param name="slot">A slot.</param>
    /// <returns>False when it was already queued.</returns>
    public bool Add(int slot)
    {
        if (_queued[slot])
            return false;
        _queued[slot] = true;
        _next[slot] = None;
        _prev[slot] = _tail;
        if (_tail == None)
            _head = slot;
        else
            _next[_tail] = slot;
        _tail = slot;
        Count++;
        return true;
    }

    /// <summary>Removes <paramref name="slot"/> wherever it is.</summary>
    /// <param name="slot">A slot.</param>
    /// <returns>False when it was not queued.</returns>
    public bool Remove(int slot)
    {
        if (!_queued[slot])
            return false;
        _queued[slot] = false;
        int prev = _prev[slot], next = _next[slot];
        if (prev == None) _head = next; else _next[prev] = next;
        if (next == None) _tail = prev; else _prev[next] = prev;
        Count--;
        return true;
    }

    /// <summary>Empties the queue.</summary>
    public void Clear()
    {
        while (_head != None)
            Remove(_head);
    }
}
