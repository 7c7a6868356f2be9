//! A part's rows as the Parquet writer takes them: one Arrow array per
//! column, and the schema readers see.
//!
//! Most tables go through a polars `DataFrame` ([`Columns::from_frame`]).
//! The String columns of `mem` and `mmio` (`type`, `device`, `region`,
//! `plugin_device`) are built instead as dictionary arrays from the codes the
//! batch already holds ([`dictionary`]): a String per row, then a hash of
//! each to find the dictionary again, was 40% of the writer's time on an
//! MMIO-heavy capture. The file's schema still says String for them (a
//! dictionary array is written as a dictionary-encoded BYTE_ARRAY column,
//! as polars writes Strings anyway), so every reader sees the same types.

use polars::prelude::{CompatLevel, DataFrame, PolarsResult, SchemaExt};
use polars_arrow::array::{Array, DictionaryArray, PrimitiveArray, Utf8ViewArray};
use polars_arrow::bitmap::Bitmap;
use polars_arrow::datatypes::{ArrowDataType, ArrowSchema, Field, IntegerType};
use polars_arrow::types::NativeType;

/// One part's columns, in the table's column order.
pub struct Columns {
    /// What readers see: a dictionary column appears as its values' type.
    pub schema: ArrowSchema,
    pub arrays: Vec<Box<dyn Array>>,
    pub rows: usize,
}

impl Columns {
    /// Empty, for `rows` rows; columns are added in order with [`Columns::push`].
    pub fn new(rows: usize) -> Columns {
        Columns {
            schema: ArrowSchema::default(),
            arrays: Vec::new(),
            rows,
        }
    }

    /// Adds column `name` (nullable, as polars makes every column).
    pub fn push(&mut self, name: &str, array: Box<dyn Array>) {
        debug_assert_eq!(array.len(), self.rows, "column {name}");
        let dtype = match array.dtype() {
            ArrowDataType::Dictionary(_, values, _) => values.as_ref().clone(),
            other => other.clone(),
        };
        self.schema
            .insert(name.into(), Field::new(name.into(), dtype, true));
        self.arrays.push(array);
    }

    /// The columns of `df`, as polars converts them to Arrow.
    pub fn from_frame(mut df: DataFrame) -> Columns {
        df.rechunk_mut();
        let rows = df.height();
        let schema = df.schema().to_arrow(CompatLevel::newest());
        let arrays = df
            .iter_chunks(CompatLevel::newest(), false)
            .next()
            .map(|batch| batch.into_arrays())
            .unwrap_or_else(|| {
                schema
                    .iter_values()
                    .map(|f| polars_arrow::array::new_empty_array(f.dtype.clone()))
                    .collect()
            });
        Columns {
            schema,
            arrays,
            rows,
        }
    }
}

/// A String column stored as a dictionary: row `i` is `values[keys[i]]`,
/// or null where `valid` says so (a null row's key is never read).
pub fn dictionary(
    keys: Vec<u32>,
    valid: Option<Bitmap>,
    values: &[&str],
) -> PolarsResult<Box<dyn Array>> {
    let dtype = ArrowDataType::Dictionary(
        IntegerType::UInt32,
        Box::new(ArrowDataType::Utf8View),
        false,
    );
    let keys = PrimitiveArray::from_vec(keys).with_validity(valid);
    let values = Utf8ViewArray::from_slice_values(values).boxed();
    Ok(DictionaryArray::try_new(dtype, keys, values)?.boxed())
}

/// A column of a few distinct small integers (vCPU numbers, access sizes,
/// instruction counts) as a dictionary: each row's key is found in a table
/// indexed by its value (below `slots`), not by hashing it. Values are
/// numbered in order of first appearance. A column with a value at or above
/// `slots` (only a corrupt ring makes one) is returned as it is, to be
/// written with polars' default encoding.
pub fn small_integers<T: NativeType + Into<u64>>(
    column: Vec<T>,
    slots: usize,
) -> PolarsResult<Box<dyn Array>> {
    const NONE: u32 = u32::MAX;
    let mut key_of = vec![NONE; slots];
    let mut values = Vec::new();
    let mut keys = Vec::with_capacity(column.len());
    for &v in &column {
        let Some(k) = key_of.get_mut(v.into() as usize) else {
            return Ok(PrimitiveArray::from_vec(column).boxed());
        };
        if *k == NONE {
            *k = values.len() as u32;
            values.push(v);
        }
        keys.push(*k);
    }
    let dtype = ArrowDataType::Dictionary(
        IntegerType::UInt32,
        Box::new(ArrowDataType::from(T::PRIMITIVE)),
        false,
    );
    let keys = PrimitiveArray::from_vec(keys);
    let values = PrimitiveArray::from_vec(values).boxed();
    Ok(DictionaryArray::try_new(dtype, keys, values)?.boxed())
}

/// A u64 column.
pub fn u64s(values: Vec<u64>) -> Box<dyn Array> {
    PrimitiveArray::from_vec(values).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_integers_become_a_dictionary_unless_one_is_out_of_range() {
        let column = small_integers(vec![8u8, 4, 8, 16, 4], 256).unwrap();
        let dict = column
            .as_any()
            .downcast_ref::<DictionaryArray<u32>>()
            .expect("a dictionary");
        assert_eq!(dict.keys().values().as_slice(), &[0, 1, 0, 2, 1]);
        let values = dict.values().as_any().downcast_ref::<PrimitiveArray<u8>>();
        assert_eq!(values.unwrap().values().as_slice(), &[8, 4, 16]);

        let column = small_integers(vec![3u32, 5000, 3], 1024).unwrap();
        let plain = column.as_any().downcast_ref::<PrimitiveArray<u32>>();
        assert_eq!(plain.expect("as it is").values().as_slice(), &[3, 5000, 3]);
    }
}
