"""Finding the cells of a whole field: the learned detector (red cells, white cells, platelets;
`learned`) and the classical threshold-and-watershed segmentation kept as a fallback
(`classical`)."""
